"""Fold splits, training lists and fixed test episodes: index arrays, built once and stored.

Everything here starts from one table per split, the mask store's ``class_pixels``
(N x (C+1) int64: pixels of classes 0..C in each image at original resolution), so the
functions here are pure: arrays in, arrays out. The shell that reads mask stores and
writes or reads the small ``.npz`` / JSON files (:func:`build_episodes`,
:func:`load_training_list`, :func:`load_test_episodes`, :func:`describe`) is
:mod:`pipeline.episode_stage`.

Protocols matched (read in the reference code, see ``docs/episodes.md``):

* **Folds.** PASCAL-5i: fold i tests classes 5i+1..5i+5. COCO-20i interleaved (PFENet
  ``use_split_coco: True``, HSNet, BAM): class c tests in fold (c-1) mod 4; contiguous
  (PANet, PFENet ``use_split_coco: False``): fold i tests 20i+1..20i+20. Other datasets:
  interleaved over their C classes, or a ``folds.txt``.
* **Usable class** (PFENet ``util/dataset.py`` ``make_dataset``): a class counts in an image
  with >= 2 x 32 x 32 = 2048 pixels at original resolution.
* **Training list** (PFENet ``make_dataset`` on the train list with the fold's train
  classes): each image with at least one usable train class, once, with its usable train
  classes. Images that also hold test classes are kept (the trainer binarises the label,
  so those pixels become background). ``drop_novel_images`` is BAM's ``filter_intersection``
  (``chunbolang/BAM`` ``util/dataset.py``): an image is dropped when *any* pixel of a
  non-training class is present (its rule tests the set of labels present, no threshold).
* **PFENet test episodes** (``make_dataset`` on the val list with the test classes, then
  ``SemData.__getitem__`` driven by ``test.py``): the query list is every val image with at
  least one usable test class, walked in order and cycled; the episode class is drawn
  uniformly among the test classes *present* in the query (any pixel: PFENet's
  ``__getitem__`` takes ``np.unique(label)`` without the threshold); K distinct supports are
  drawn uniformly from that class's list (images where it is usable), never the query.
* **HSNet test episodes** (``juhongm999/hsnet`` ``data/pascal.py``, ``data/coco.py``):
  PASCAL/folder/demo: the (image, class) pairs of the fold in order, episode i uses pair
  i mod P; COCO: class uniform over the fold's classes, query uniform in its list. Supports
  uniform from the class list, not the query.
* **Datasets of one class per image** (:func:`reference_episodes`), the same draws as the
  reference code: FSS-1000 (HSNet ``data/fss.py``, which PATNet reuses): every test image
  is the query once, in list order; each support is drawn from the class's images ``1..10``
  again until it is not the query, so the supports of one episode may repeat. Deepglobe,
  ISIC, Chest X-ray (PATNet ``data/{deepglobe,isic,lung}.py``): episode i has class
  ``i mod C``, a query drawn from the class's images and supports drawn as above; 600
  episodes. Both seed numpy's legacy global state with 0 (``utils.fix_randseed(0)``) and
  draw with ``np.random.choice(list, 1, replace=False)``; we replay those calls on a
  ``np.random.RandomState(seed)``, so on the same files the episodes are theirs.

Randomness of the other protocols is a numpy ``Generator`` (PCG64) seeded with the episode
seed; PFENet and HSNet use Python's ``random`` / numpy's legacy global state there, so our
episodes follow the same protocol but are not the same draws as their files. Our draw order
puts the query and class first and the supports shot by shot, so for one seed the 1-shot
episodes are the first support of the 5-shot episodes (same query, class and first support).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.errors import ConfigError

DEFAULT_MIN_PIXELS = 2 * 32 * 32  # 2048: PFENet's (Shaban's) small-object rule
DEFAULT_SEED = 321  # PFENet / QGNet val seed
HSNET_SEED = 0  # HSNet and PATNet test.py: utils.fix_randseed(0)
VAL_SEED = 123  # model selection during training: not the test seed (docs/fss.md)
PROTOCOLS = ("pfenet", "hsnet", "patnet")
PATNET_EPISODES = 600  # PATNet data/{deepglobe,isic,lung}.py: num=600
#: FSS-1000 with HSNet's split (pipeline.datasets.fss1000): class ids of each block.
FSS1000_CLASSES = {"train": (1, 520), "val": (521, 760), "test": (761, 1000)}
#: Cross-domain test sets (PATNet): one fold, every class a test class, no training list.
EVAL_ONLY = ("deepglobe", "isic", "chest")
COCO_SPLITS = ("interleaved", "contiguous")
DEFAULT_SHOTS = (1, 5)
NUM_FOLDS = 4
FOLDS_FILE_NAME = "folds.txt"


class EpisodeWarning(UserWarning):
    """A class was left out of the episodes (too few usable images)."""


# ========================================================================================
# fold splits
# ========================================================================================

def parse_folds_file(path: str | os.PathLike, class_names: Sequence[str] | None = None,
                     *, num_classes: int | None = None) -> list[np.ndarray]:
    """Read a ``folds.txt``: one line per fold, the fold's test classes.

    Classes are ids (1..C) or names. A line with a comma is split on commas (so names may
    hold spaces: ``parking meter, dog``), otherwise on white space. Blank lines and lines
    starting with ``#`` are skipped.

    Returns
    -------
    list of (T_f,) int64 arrays
        Sorted test class ids of each fold.

    Raises
    ------
    ValueError
        Unknown id or name, a class listed twice, folds that overlap, an empty file, or a
        fold that leaves no training class; the message names the file and the line.
    """
    path = Path(path)
    names = list(class_names) if class_names is not None else None
    c = num_classes if num_classes is not None else (len(names) if names is not None else None)
    if c is None:
        raise ValueError("parse_folds_file needs class_names or num_classes")
    lookup = {n: i + 1 for i, n in enumerate(names or [])}
    folds: list[np.ndarray] = []
    owner: dict[int, int] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = [t.strip() for t in (line.split(",") if "," in line else line.split())]
        ids: list[int] = []
        for tok in filter(None, tokens):
            if re.fullmatch(r"\d+", tok):
                cid = int(tok)
                if not 1 <= cid <= c:
                    raise ConfigError(f"{path}:{lineno}: class id {cid} is outside 1..{c}")
            elif tok in lookup:
                cid = lookup[tok]
            else:
                known = f"; known names: {', '.join(names)}" if names else " (no class names known)"
                raise ConfigError(f"{path}:{lineno}: unknown class {tok!r}{known}")
            if cid in ids:
                raise ConfigError(f"{path}:{lineno}: class {tok!r} is listed twice")
            if cid in owner:
                raise ConfigError(f"{path}:{lineno}: class {tok!r} is already a test class of fold "
                                  f"{owner[cid]}; folds must be disjoint")
            ids.append(cid)
        fold = len(folds)
        for cid in ids:
            owner[cid] = fold
        if len(ids) >= c:
            raise ConfigError(f"{path}:{lineno}: fold {fold} tests every class; none is left "
                              f"for training")
        folds.append(np.array(sorted(ids), dtype=np.int64))
    if not folds:
        raise ConfigError(f"{path} lists no fold; write one line of test classes per fold")
    return folds


def num_folds(*, folds_file: str | os.PathLike | None = None) -> int:
    """4, or the number of fold lines of ``folds_file``."""
    if folds_file is None:
        return NUM_FOLDS
    return sum(1 for ln in Path(folds_file).read_text().splitlines()
               if ln.strip() and not ln.strip().startswith("#"))


def fold_classes(dataset_name: str, num_classes: int, fold: int, *,
                 coco_split: str = "interleaved", folds_file: str | os.PathLike | None = None,
                 class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Test and training classes (1-based ids, sorted) of one fold.

    Parameters
    ----------
    dataset_name : str
        ``"pascal"`` (PASCAL-5i), ``"coco"`` (COCO-20i), ``"fss1000"`` (one fold: HSNet's
        240 test classes 761..1000, trained on 1..520), ``"deepglobe"``, ``"isic"``,
        ``"chest"`` (one fold, every class tested, none trained) or any other dataset
        (folder, demo).
    num_classes : int
        C (20 for PASCAL, 80 for COCO).
    fold : int
        0..3, or 0..(lines of ``folds_file`` - 1).
    coco_split : {"interleaved", "contiguous"}
        COCO only. Interleaved: c tests in fold (c - 1) mod 4. Contiguous: fold i tests
        20i+1..20i+20.
    folds_file : path, optional
        Other datasets only: a ``folds.txt`` (see :func:`parse_folds_file`). Without it the
        C classes are interleaved: c tests in fold (c - 1) mod 4.
    class_names : sequence of str, optional
        Needed when ``folds_file`` names classes instead of numbering them.

    Returns
    -------
    test_classes, train_classes : int64 arrays
        Train classes are all the other classes 1..C.

    Examples
    --------
    >>> fold_classes("pascal", 20, 1)[0].tolist()
    [6, 7, 8, 9, 10]
    >>> fold_classes("coco", 80, 0)[0][:4].tolist()
    [1, 5, 9, 13]
    """
    fold = int(fold)
    all_classes = np.arange(1, num_classes + 1, dtype=np.int64)
    if dataset_name == "pascal":
        if num_classes != 20:
            raise ConfigError(f"PASCAL-5i needs 20 classes, the store has {num_classes}")
        _check_fold(fold, NUM_FOLDS, "PASCAL-5i")
        test = np.arange(5 * fold + 1, 5 * fold + 6, dtype=np.int64)
    elif dataset_name == "coco":
        if num_classes != 80:
            raise ConfigError(f"COCO-20i needs 80 classes, the store has {num_classes}")
        _check_fold(fold, NUM_FOLDS, "COCO-20i")
        if coco_split == "interleaved":
            test = all_classes[(all_classes - 1) % 4 == fold]
        elif coco_split == "contiguous":
            test = np.arange(20 * fold + 1, 20 * fold + 21, dtype=np.int64)
        else:
            raise ConfigError(f"coco_split must be one of {COCO_SPLITS}, got {coco_split!r}")
    elif dataset_name == "fss1000":
        if num_classes != 1000:
            raise ConfigError(f"FSS-1000 needs 1000 classes, the store has {num_classes}")
        _check_fold(fold, 1, "FSS-1000 (one fixed split)")
        lo, hi = FSS1000_CLASSES["test"]
        test = np.arange(lo, hi + 1, dtype=np.int64)
        lo, hi = FSS1000_CLASSES["train"]
        return test, np.arange(lo, hi + 1, dtype=np.int64)  # the val classes are in neither
    elif dataset_name in EVAL_ONLY:
        _check_fold(fold, 1, f"{dataset_name} (an evaluation-only benchmark)")
        return all_classes, np.zeros(0, dtype=np.int64)
    elif folds_file is not None:
        folds = parse_folds_file(folds_file, class_names, num_classes=num_classes)
        _check_fold(fold, len(folds), str(folds_file))
        test = folds[fold]
    else:
        if num_classes < 2:
            raise ConfigError(f"dataset {dataset_name!r} has {num_classes} class(es); few-shot "
                              f"folds need at least 2")
        _check_fold(fold, NUM_FOLDS, f"{dataset_name} (interleaved)")
        test = all_classes[(all_classes - 1) % 4 == fold]
        if len(test) == 0:
            raise ConfigError(f"fold {fold} of {dataset_name!r} has no test class with only "
                              f"{num_classes} classes; write a {FOLDS_FILE_NAME} with fewer folds")
    train = np.setdiff1d(all_classes, test)
    return test, train


def _check_fold(fold: int, n: int, what: str) -> None:
    if not 0 <= fold < n:
        raise ConfigError(f"fold {fold} does not exist for {what}: folds are 0..{n - 1}")


def split_kind(dataset_name: str, *, coco_split: str = "interleaved",
               folds_file: str | os.PathLike | None = None) -> str:
    """Name of the fold definition, recorded in ``folds.json``."""
    if dataset_name == "pascal":
        return "pascal-5i"
    if dataset_name == "coco":
        return f"coco-20i-{coco_split}"
    if dataset_name == "fss1000":
        return "fss1000-hsnet"
    if dataset_name in EVAL_ONLY:
        return "cross-domain"
    return "folds.txt" if folds_file is not None else "interleaved"


def num_dataset_folds(dataset_name: str, *, folds_file: str | os.PathLike | None = None) -> int:
    """Folds of a dataset: 4 (PASCAL-5i, COCO-20i, interleaved), 1 (FSS-1000 and the
    cross-domain sets), or the lines of ``folds_file``."""
    if dataset_name in ("pascal", "coco"):
        return NUM_FOLDS
    if dataset_name == "fss1000" or dataset_name in EVAL_ONLY:
        return 1
    return num_folds(folds_file=folds_file)


# ========================================================================================
# training lists
# ========================================================================================

def usable_classes(class_pixels: np.ndarray, *, min_pixels: int = DEFAULT_MIN_PIXELS) -> np.ndarray:
    """(N, C) bool: class ``c`` (column ``c - 1``) has >= ``min_pixels`` pixels in the image."""
    cp = np.asarray(class_pixels)
    if cp.ndim != 2 or cp.shape[1] < 2:
        raise ValueError(f"class_pixels must be N x (C+1), got shape {cp.shape}")
    return cp[:, 1:] >= min_pixels


def _csr(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise CSR of a bool matrix: (indptr (R+1,), column ids + 1, ascending per row)."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(rows.sum(1), out=indptr[1:])
    cols = np.nonzero(rows)[1].astype(np.int32) + 1  # row-major: per row ascending
    return indptr, cols


def training_list(class_pixels: np.ndarray, train_classes: Iterable[int], *,
                  test_classes: Iterable[int] = (), min_pixels: int = DEFAULT_MIN_PIXELS,
                  drop_novel_images: bool = False) -> dict[str, np.ndarray]:
    """The training list of one fold (PFENet's ``make_dataset``, optionally BAM's filter).

    Parameters
    ----------
    class_pixels : (N, C+1) int array
        Pixels per class of every image of the training split.
    train_classes, test_classes : ints
        1-based class ids of the fold.
    min_pixels : int
        A class counts in an image with at least this many pixels (default 2048).
    drop_novel_images : bool
        BAM's ``filter_intersection``: drop every image holding *any* pixel of a class that
        is not a training class. Default False (PFENet: keep them; the trainer maps those
        pixels to background when it binarises the label).

    Returns
    -------
    dict of arrays
        ``image_index`` (M,) int32 indices into the store; ``classes_indptr`` (M+1,) and
        ``classes`` (P,) int32: CSR of the usable training classes of each listed image
        (``classes[indptr[i]:indptr[i+1]]``); ``present_indptr`` / ``present_classes``: the
        training classes with any pixel (PFENet's trainer draws the episode class among
        these); ``class_indptr`` (C+2,) / ``class_images``: for class c, the store indices
        of the images where it is usable (``class_images[class_indptr[c]:class_indptr[c+1]]``,
        PFENet's ``sub_class_file_list``; empty for test classes).

    Examples
    --------
    >>> cp = np.array([[0, 2048, 0], [0, 2047, 0], [0, 3000, 5]])
    >>> training_list(cp, [1], test_classes=[2])["image_index"].tolist()
    [0, 2]
    >>> training_list(cp, [1], test_classes=[2], drop_novel_images=True)["image_index"].tolist()
    [0]
    """
    cp = np.asarray(class_pixels)
    usable = usable_classes(cp, min_pixels=min_pixels)  # N x C
    c = usable.shape[1]
    train_mask = _class_mask(train_classes, c)
    u = usable & train_mask  # N x C: usable training classes
    keep = u.any(axis=1)
    if drop_novel_images:
        other = ~train_mask  # every non-training class: the fold's test classes
        keep &= ~(cp[:, 1:][:, other] > 0).any(axis=1)
    image_index = np.flatnonzero(keep).astype(np.int32)
    indptr, classes = _csr(u[keep])
    present = (cp[keep, 1:] > 0) & train_mask
    pindptr, pclasses = _csr(present)
    # per-class lists, over the kept images only (class c -> rows of column c - 1)
    cu = u[keep].T  # C x M
    class_indptr = np.zeros(c + 2, dtype=np.int64)
    np.cumsum(cu.sum(1), out=class_indptr[2:])
    class_images = image_index[np.nonzero(cu)[1]].astype(np.int32)
    return {"image_index": image_index, "classes_indptr": indptr, "classes": classes,
            "present_indptr": pindptr, "present_classes": pclasses,
            "class_indptr": class_indptr, "class_images": class_images}


def _class_mask(classes: Iterable[int], c: int) -> np.ndarray:
    arr = np.asarray(list(classes), dtype=np.int64)
    if arr.size and (arr.min() < 1 or arr.max() > c):
        raise ValueError(f"class ids must be in 1..{c}, got {arr.tolist()}")
    mask = np.zeros(c, dtype=bool)
    mask[arr - 1] = True
    return mask


def check_disjoint(train_ids: Iterable[str], val_ids: Iterable[str], *,
                   names: tuple[str, str] = ("train", "val")) -> None:
    """Refuse a training split that shares images with the evaluation split.

    Raises
    ------
    ValueError
        Naming how many ids overlap and the first few of them.
    """
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        head = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise ConfigError(f"the {names[0]} and {names[1]} splits share {len(overlap)} image(s) "
                          f"({head}); few-shot evaluation needs disjoint splits. Rebuild the "
                          f"mask stores from disjoint lists (PASCAL: VOC val must be removed "
                          f"from the training set)")


# ========================================================================================
# test episodes
# ========================================================================================

def sample_episodes(class_pixels: np.ndarray, test_classes: Iterable[int], *, shot: int,
                    n_episodes: int, seed: int, protocol: str = "pfenet",
                    query_mode: str | None = None, dataset_name: str = "",
                    min_pixels: int = DEFAULT_MIN_PIXELS, warn: bool = True
                    ) -> dict[str, np.ndarray]:
    """Fixed test episodes of one fold.

    Parameters
    ----------
    class_pixels : (N, C+1) int array
        Pixels per class of every image of the evaluation (val) split.
    test_classes : ints
        The fold's 1-based test classes; episodes use only these.
    shot : int
        K supports per episode (distinct images, never the query).
    n_episodes : int
        E.
    seed : int
        Seed of the ``np.random.Generator`` (PCG64).
    protocol : {"pfenet", "hsnet"}
        ``pfenet``: walk the query list (images with a usable test class) in store order,
        cycling; class uniform among the test classes present in the query (any pixel).
        ``hsnet``: see ``query_mode``.
    query_mode : {"walk", "pairs", "class"}, optional
        Overrides the protocol's query rule. Defaults: pfenet -> ``"walk"``; hsnet ->
        ``"class"`` for COCO (class uniform, then query uniform in its list, HSNet
        ``data/coco.py``), ``"pairs"`` otherwise (episode i uses the i mod P-th usable
        (image, class) pair, HSNet ``data/pascal.py``).
    dataset_name : str
        Only picks the HSNet query rule.
    min_pixels : int
        Usable-class threshold (supports always need it; so do query lists).
    warn : bool
        Emit an :class:`EpisodeWarning` for classes left out.

    Returns
    -------
    dict
        ``query`` (E,) int32 and ``support`` (E, K) int32 store indices; ``cls`` (E,) int32
        class ids; ``skipped_classes`` (S,) int32: test classes with fewer than K+1 usable
        images, left out (no episode uses them); ``n_queries``: length of the query list.

    Raises
    ------
    ValueError
        When no test class has K+1 usable images (no episode can be formed).

    Examples
    --------
    >>> cp = np.zeros((6, 3), dtype=np.int64); cp[:, 1] = 5000
    >>> ep = sample_episodes(cp, [1], shot=1, n_episodes=4, seed=0)
    >>> ep["query"].tolist(), bool((ep["support"][:, 0] != ep["query"]).all())
    ([0, 1, 2, 3], True)
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if shot < 1 or n_episodes < 1 or min_pixels < 1:
        raise ConfigError(f"shot, n_episodes and min_pixels must be >= 1, got {shot}, "
                          f"{n_episodes}, {min_pixels}")
    if query_mode is None:
        query_mode = "walk" if protocol == "pfenet" else ("class" if dataset_name == "coco"
                                                         else "pairs")
    cp = np.asarray(class_pixels)
    usable = usable_classes(cp, min_pixels=min_pixels)  # N x C
    n, c = usable.shape
    test = np.unique(np.asarray(list(test_classes), dtype=np.int64))
    _class_mask(test, c)  # validates the ids
    counts = usable[:, test - 1].sum(axis=0)  # T
    able = test[counts >= shot + 1]
    skipped = test[counts < shot + 1].astype(np.int32)
    if skipped.size and warn:
        detail = ", ".join(f"{k} ({m} image(s))" for k, m in zip(skipped.tolist(),
                                                                    counts[counts < shot + 1], strict=True))
        warnings.warn(f"{len(skipped)} test class(es) have fewer than {shot + 1} usable images "
                      f"(>= {min_pixels} px) and are left out of the {shot}-shot episodes: "
                      f"{detail}", EpisodeWarning, stacklevel=2)
    if able.size == 0:
        raise ConfigError(f"no test class of {test.tolist()} has {shot + 1} images with >= "
                          f"{min_pixels} pixels: no {shot}-shot episode can be formed")
    rng = np.random.Generator(np.random.PCG64(seed))
    # class lists: images where the class is usable, one sorted segment per class (rank r)
    ua = usable[:, able - 1]  # N x A
    members = np.nonzero(ua.T)[1].astype(np.int64)  # concatenated, image-sorted per class
    offset = np.zeros(len(able) + 1, dtype=np.int64)
    np.cumsum(ua.sum(0), out=offset[1:])
    length = np.diff(offset)  # A

    e = n_episodes
    if query_mode == "walk":
        qlist = np.flatnonzero(ua.any(axis=1))  # PFENet's val data_list, in store order
        query = qlist[np.arange(e) % len(qlist)]
        present = cp[query][:, able] > 0  # E x A: candidate classes (any pixel)
        n_cand = present.sum(1)
        pick = rng.integers(0, n_cand)  # the r-th present class
        rank = (np.cumsum(present, axis=1) <= pick[:, None]).sum(1)
        n_queries = len(qlist)
    elif query_mode == "pairs":
        img, rk = np.nonzero(ua)  # (image, class) pairs, image-major, class ascending
        i = np.arange(e) % len(img)
        query, rank = img[i], rk[i]
        n_queries = len(img)
    elif query_mode == "class":
        rank = rng.integers(0, len(able), size=e)
        query = members[offset[rank] + rng.integers(0, length[rank])]
        n_queries = int(length.sum())
    else:
        raise ValueError(f"query_mode must be 'walk', 'pairs' or 'class', got {query_mode!r}")

    # position of the query in its class list (-1 when the class is not usable there)
    key = rank * n + query
    all_keys = np.repeat(np.arange(len(able)), length) * n + members
    pos = np.searchsorted(all_keys, key)
    inside = (pos < len(all_keys)) & (all_keys[np.minimum(pos, len(all_keys) - 1)] == key)
    big = np.iinfo(np.int64).max
    excluded = np.full((e, shot + 1), big, dtype=np.int64)  # E x (K+1), sorted per row
    excluded[:, 0] = np.where(inside, pos - offset[rank], big)
    n_excl = inside.astype(np.int64)
    support = np.empty((e, shot), dtype=np.int64)
    for k in range(shot):
        # uniform rank among the not-yet-excluded members, mapped past the excluded ones
        j = rng.integers(0, length[rank] - n_excl)
        for col in range(k + 1):  # excluded ascending; padding (big) never shifts
            j += j >= excluded[:, col]
        support[:, k] = members[offset[rank] + j]
        excluded[:, k + 1] = j
        excluded.sort(axis=1)
        n_excl += 1
    return {"query": query.astype(np.int32), "support": support.astype(np.int32),
            "cls": able[rank].astype(np.int32), "skipped_classes": skipped,
            "n_queries": np.int64(n_queries)}


def episode_stats(query: np.ndarray, support: np.ndarray, cls: np.ndarray) -> dict[str, Any]:
    """Episodes per class, distinct queries and how often support images are reused."""
    support = np.asarray(support).reshape(len(query), -1)
    classes, per_class = np.unique(cls, return_counts=True)
    s_ids, s_uses = np.unique(support, return_counts=True)
    return {
        "episodes": int(len(query)),
        "episodes_per_class": {int(k): int(v) for k, v in zip(classes, per_class, strict=True)},
        "distinct_queries": int(len(np.unique(query))),
        "support_slots": int(support.size),
        "distinct_supports": int(len(s_ids)),
        "support_uses_mean": round(float(s_uses.mean()), 2) if len(s_uses) else 0.0,
        "support_uses_max": int(s_uses.max()) if len(s_uses) else 0,
    }


def default_episode_count(dataset_name: str, protocol: str = "pfenet") -> int | None:
    """1000 (PASCAL: QGNet's train.py; folder/demo; HSNet on PASCAL and COCO), 20,000 for
    COCO/PFENet, 600 for PATNet's cross-domain sets, ``None`` (every test image once: 2,400)
    for FSS-1000 under HSNet's or PATNet's protocol."""
    if dataset_name == "fss1000" and protocol in ("hsnet", "patnet"):
        return None
    if protocol == "patnet":
        return PATNET_EPISODES
    if protocol == "pfenet" and dataset_name == "coco":
        return 20000
    return 1000


def default_seed(protocol: str) -> int:
    """321 for PFENet, 0 for HSNet and PATNet."""
    return HSNET_SEED if protocol in ("hsnet", "patnet") else DEFAULT_SEED


def reference_rule(dataset_name: str, protocol: str) -> str | None:
    """Which :func:`reference_episodes` rule a dataset and protocol take, or None when the
    episodes come from :func:`sample_episodes`.

    Raises
    ------
    ConfigError
        ``patnet`` on a dataset PATNet does not test on, or ``hsnet`` on a cross-domain set.
    """
    if dataset_name == "fss1000" and protocol in ("hsnet", "patnet"):
        return "fss"
    if dataset_name in EVAL_ONLY:
        if protocol != "patnet":
            raise ConfigError(f"{dataset_name} is a PATNet cross-domain test set: its episodes "
                              f"use --protocol patnet (got {protocol!r})")
        return "patnet"
    if protocol == "patnet":
        raise ConfigError(f"--protocol patnet applies to fss1000, {', '.join(EVAL_ONLY)}; "
                          f"{dataset_name!r} takes pfenet or hsnet")
    return None


def numeric_name_rank(ids: Sequence[str]) -> np.ndarray:
    """(N,) rank of each id when sorted by its last path part read as a number
    (``cls/2`` before ``cls/10``; non-numbers after numbers, by text): the order in which
    HSNet's FSS-1000 reader draws supports (``np.random.choice(range(1, 11))``)."""
    def key(i: int):
        stem = ids[i].rsplit("/", 1)[-1]
        return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)

    order = sorted(range(len(ids)), key=key)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def reference_episodes(image_class: np.ndarray, test_classes: Iterable[int], *, shot: int,
                       seed: int, rule: str, n_episodes: int | None = None,
                       pool_rank: np.ndarray | None = None, warn: bool = True
                       ) -> dict[str, np.ndarray]:
    """Test episodes of a one-class-per-image dataset, drawn as HSNet's or PATNet's reader
    draws them.

    Parameters
    ----------
    image_class : (N,) int array
        Class of every image of the evaluation store (0: none, e.g. a failed image).
    test_classes : ints
        Classes tested (FSS-1000: 761..1000; the cross-domain sets: all).
    shot : int
        K supports per episode; each is drawn from the class's images again until it is not
        the query, so supports of one episode may repeat (as in the references).
    seed : int
        Seed of the ``np.random.RandomState`` that replays the references' global numpy
        draws (their test.py seeds 0).
    rule : {"fss", "patnet"}
        ``fss`` (HSNet ``data/fss.py``): every image of a test class is the query once, in
        store order (class by class); supports come from the class's images ordered by
        ``pool_rank`` (HSNet draws file numbers 1..10). ``patnet`` (PATNet
        ``data/{deepglobe,isic,lung}.py``): episode i has the i mod T-th test class, its query
        and supports drawn from the class's images in store order.
    n_episodes : int, optional
        E. Default: ``fss`` one per test image, ``patnet`` 600. A smaller E keeps the first
        E episodes of the default sequence (the same draws); a larger ``fss`` E walks the
        images again.
    pool_rank : (N,) int array, optional
        Order of the images within a class's support pool (default: store order).
    warn : bool
        Emit an :class:`EpisodeWarning` for classes left out (fewer than 2 images: the
        references would loop forever).

    Returns
    -------
    dict
        As :func:`sample_episodes`: ``query`` (E,), ``support`` (E, K) int32 store indices,
        ``cls`` (E,), ``skipped_classes``, ``n_queries``.

    Examples
    --------
    >>> ep = reference_episodes(np.array([1, 1, 1, 2, 2]), [1, 2], shot=1, seed=0, rule="fss")
    >>> ep["query"].tolist(), ep["cls"].tolist()
    ([0, 1, 2, 3, 4], [1, 1, 1, 2, 2])
    >>> bool((ep["support"][:, 0] != ep["query"]).all())
    True
    """
    if rule not in ("fss", "patnet"):
        raise ValueError(f"rule must be 'fss' or 'patnet', got {rule!r}")
    if shot < 1 or (n_episodes is not None and n_episodes < 1):
        raise ConfigError(f"shot and n_episodes must be >= 1, got {shot}, {n_episodes}")
    ic = np.asarray(image_class, dtype=np.int64).reshape(-1)
    test = np.unique(np.asarray(list(test_classes), dtype=np.int64))
    rank = np.arange(len(ic)) if pool_rank is None else np.asarray(pool_rank, dtype=np.int64)
    pools = {}
    for c in test.tolist():
        members = np.flatnonzero(ic == c)
        pools[c] = members[np.argsort(rank[members], kind="stable")]
    skipped = np.array([c for c in test.tolist() if len(pools[c]) < 2], dtype=np.int32)
    able = [c for c in test.tolist() if len(pools[c]) >= 2]
    if skipped.size and warn:
        warnings.warn(f"{len(skipped)} test class(es) have fewer than 2 images and are left "
                      f"out of the episodes: {skipped.tolist()}", EpisodeWarning, stacklevel=2)
    if not able:
        raise ConfigError(f"no test class of {test.tolist()} has 2 images: no episode can be "
                          f"formed")
    rs = np.random.RandomState(int(seed))

    def draw(pool: np.ndarray) -> int:  # np.random.choice(pool, 1, replace=False)[0]
        return int(pool[rs.permutation(len(pool))[0]])

    if rule == "fss":
        qlist = np.flatnonzero(np.isin(ic, able))  # store order: HSNet's img_metadata
        e = len(qlist) if n_episodes is None else int(n_episodes)
        queries = qlist[np.arange(e) % len(qlist)]
        classes = ic[queries]
        n_queries = len(qlist)
    else:
        e = PATNET_EPISODES if n_episodes is None else int(n_episodes)
        classes = np.asarray(able, dtype=np.int64)[np.arange(e) % len(able)]
        queries = np.empty(e, dtype=np.int64)
        n_queries = int(sum(len(pools[c]) for c in able))
    support = np.empty((e, shot), dtype=np.int64)
    for i in range(e):
        pool = pools[int(classes[i])]
        if rule == "patnet":
            queries[i] = draw(pool)
        q, k = int(queries[i]), 0
        while k < shot:  # "keep sampling support set if query == support"
            s = draw(pool)
            if s != q:
                support[i, k] = s
                k += 1
    return {"query": queries.astype(np.int32), "support": support.astype(np.int32),
            "cls": classes.astype(np.int32), "skipped_classes": skipped,
            "n_queries": np.int64(n_queries)}
