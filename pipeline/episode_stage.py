"""Offline stage: mask stores -> fold splits, training lists and fixed test episodes.

The shell around the pure protocol of :mod:`pipeline.episodes` (``qgnet-prep episodes``):
it reads the ``class_pixels`` table of the train and val mask stores
(:mod:`pipeline.mask_stage`), runs the protocol, and writes small ``.npz`` / JSON files;
the loaders hand those files to the trainer and the evaluator and refuse files built from
another version of a mask store.

Files under ``episodes_dir(dataset)``::

    folds.json                                   fold classes (ids and names), stores, params
    train-fold{F}[-aug][-dropnovel].npz          training list of fold F
    test-fold{F}-shot{K}-{protocol}-seed{S}.npz  fixed test episodes

The test episodes index the mask store of the dataset's evaluation split
(:func:`pipeline.benchmarks.eval_split`: ``val``, or ``test`` for FSS-1000 and the
cross-domain sets); each file records it (``split``) and its loaders follow it. The
cross-domain sets have no training list; FSS-1000's is built when its ``train`` store exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.episodes import (
    DEFAULT_MIN_PIXELS,
    DEFAULT_SEED,
    DEFAULT_SHOTS,
    EVAL_ONLY,
    FOLDS_FILE_NAME,
    PROTOCOLS,
    VAL_SEED,
    EpisodeWarning,
    _check_fold,
    check_disjoint,
    default_episode_count,
    default_seed,
    episode_stats,
    fold_classes,
    num_dataset_folds,
    numeric_name_rank,
    reference_episodes,
    reference_rule,
    sample_episodes,
    split_kind,
    training_list,
    usable_classes,
)
from pipeline.errors import ConfigError
from pipeline.settings import option


@dataclasses.dataclass(frozen=True)
class EpisodesConfig:
    """Options of ``qgnet-prep episodes``; ``None`` = not set: the protocol's default."""

    dataset: str | None = None
    cache_dir: str | None = None
    folds: tuple[int, ...] | None = None      # default: every fold
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] | None = None      # default: 321 (pfenet) or 0 (hsnet), plus 123 (validation)
    episodes: int | None = option(None, min=1)  # default: pipeline.episodes.default_episode_count
    protocol: str | None = None               # default: the benchmark's (pipeline.benchmarks)
    min_pixels: int = option(2048, min=1)
    drop_novel_images: bool = False
    pascal_train_set: str = "train"
    coco_split: str = "interleaved"
    folds_file: str | None = None
    training_lists: bool | None = None  # default: needed, except FSS-1000 (when its train
    #                                    store exists) and the cross-domain sets (never)


# ========================================================================================
# files: names, hashing, atomic writes
# ========================================================================================

def ids_hash(ids: Sequence[str]) -> str:
    """Short hash of a store's id list (order matters: the files hold indices)."""
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def train_split_name(dataset_name: str, train_set: str | None = None) -> str:
    """Mask-store split of the training list: ``train``, or ``aug`` for PASCAL's 10,582 set."""
    if train_set in (None, "train"):
        return "train"
    if train_set == "aug":
        if dataset_name != "pascal":
            raise ConfigError(f"the 'aug' training set exists for PASCAL only, not {dataset_name!r}")
        return "aug"
    raise ConfigError(f"train_set must be 'train' or 'aug', got {train_set!r}")


def train_list_name(fold: int, *, train_set: str | None = None,
                    drop_novel_images: bool = False) -> str:
    aug = "-aug" if train_set == "aug" else ""
    return f"train-fold{fold}{aug}{'-dropnovel' if drop_novel_images else ''}.npz"


def episode_file_name(fold: int, shot: int, *, seed: int, protocol: str = "pfenet") -> str:
    return f"test-fold{fold}-shot{shot}-{protocol}-seed{seed}.npz"


def _save_npz_atomic(path: Path, arrays: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for k, v in out.items():  # 0-d arrays back to Python scalars / strings
        if v.ndim == 0:
            out[k] = v.item()
    return out


# ========================================================================================
# stores -> files (what `qgnet-prep episodes` runs)
# ========================================================================================

def _masks_command(dataset: str, split: str, cache_dir) -> str:
    from pipeline.mask_stage import build_command

    return build_command(dataset, split, cache_dir=cache_dir or None)


def _open_masks(dataset: str, split: str, cache_dir):
    """The complete mask store, open (:func:`pipeline.mask_stage.locate_mask_store`)."""
    from pipeline.mask_stage import locate_mask_store

    return locate_mask_store(dataset, split, cache_dir=cache_dir)


def _episodes_command(dataset: str, cache_dir, **opts) -> str:
    from pipeline.settings import format_command

    return format_command("qgnet-prep", "episodes", dataset=dataset, **opts,
                          cache_dir=cache_dir or None)


def _test_episodes(store, cp: np.ndarray, *, dataset: str, protocol: str, test, shot: int,
                   n_episodes: int | None, seed: int, min_pixels: int, warn: bool = True
                   ) -> dict[str, Any]:
    """The episodes of one fold, shot and seed from an evaluation store: the reference draws
    of :func:`pipeline.episodes.reference_episodes` for FSS-1000 and the cross-domain sets,
    :func:`pipeline.episodes.sample_episodes` otherwise."""
    rule = reference_rule(dataset, protocol)
    if rule is None:
        e = default_episode_count(dataset, protocol) if n_episodes is None else n_episodes
        return sample_episodes(cp, test, shot=shot, n_episodes=int(e), seed=seed,
                               protocol=protocol, dataset_name=dataset, min_pixels=min_pixels,
                               warn=warn)
    if "image_class" not in store.attrs.get("extras", []):
        raise ConfigError(f"{store.path} has no image_class table (made before this reader "
                          f"kept it); rebuild it with "
                          f"{_masks_command(dataset, store.attrs.get('split'), None)} "
                          f"--overwrite")
    return reference_episodes(store.extra("image_class"), test, shot=shot, seed=seed, rule=rule,
                              n_episodes=n_episodes, warn=warn,
                              pool_rank=numeric_name_rank(store.ids) if rule == "fss" else None)


def build_episodes(dataset: str, *, cache_dir=None, folds: Sequence[int] | None = None,
                   shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] | None = None,
                   protocol: str | None = None, n_episodes: int | None = None,
                   min_pixels: int = DEFAULT_MIN_PIXELS, drop_novel_images: bool = False,
                   train_set: str | None = None, coco_split: str = "interleaved",
                   folds_file: str | os.PathLike | None = None,
                   training_lists: bool | None = None,
                   config: Mapping[str, Any] | None = None,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Read the mask stores of ``dataset`` and write every episode file.

    Writes ``folds.json``, one training list per fold and one test-episode file per fold,
    shot and seed into :func:`pipeline.cache.episodes_dir`, and prints the counts.
    Defaults from :func:`pipeline.benchmarks.benchmark_for`: the protocol (pfenet; hsnet for
    FSS-1000; patnet for the cross-domain sets), all folds, shots 1 and 5, the protocol's
    test seed (321 / 0) plus, where training lists are written, :data:`VAL_SEED` for model
    selection during training, E from
    :func:`default_episode_count`. ``training_lists``: None builds them where the benchmark
    trains (FSS-1000: when its ``train`` store exists; the cross-domain sets: never).
    Returns a summary dict (paths and counts).

    Raises
    ------
    StoreError
        A mask store is missing or incomplete (the message holds the ``qgnet-prep masks``
        command).
    ValueError
        Overlapping train/val ids, bad folds, an impossible episode set.
    """
    from pipeline.benchmarks import benchmark_for
    from pipeline.cache import episodes_dir
    from pipeline.fileio import write_json_atomic
    from pipeline.provenance import provenance
    from pipeline.store import StoreError

    bench = benchmark_for(dataset)
    protocol = protocol or bench.protocol
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    reference_rule(dataset, protocol)  # refuses a protocol the dataset does not take
    esplit = bench.eval_split
    tsplit = train_split_name(dataset, train_set)
    if dataset in EVAL_ONLY:
        if training_lists:
            raise ConfigError(f"{dataset} is an evaluation-only benchmark (PATNet tests models "
                              f"trained on PASCAL): it has no training split")
        training_lists = False
    val_store = _open_masks(dataset, esplit, cache_dir)
    train_store = None
    if training_lists is not False:
        try:
            train_store = _open_masks(dataset, tsplit, cache_dir)
        except StoreError:
            if training_lists or dataset != "fss1000":
                raise
            echo(f"note: no complete {dataset} {tsplit} mask store: test episodes only (build "
                 f"it with {_masks_command(dataset, tsplit, cache_dir)} for training lists)")
    attrs = val_store.attrs
    names = list(attrs.get("class_names") or [])
    c = int(attrs.get("num_classes") or len(names))
    vcp = val_store.extra("class_pixels")
    tcp = train_store.extra("class_pixels") if train_store is not None else None
    for st, cp in ((train_store, tcp), (val_store, vcp)):
        if st is not None and cp.shape != (st.n, c + 1):
            raise ConfigError(f"{st.path}: class_pixels has shape {cp.shape}, expected "
                              f"({st.n}, {c + 1}); rebuild it with "
                              f"{_masks_command(dataset, st.attrs.get('split'), cache_dir)}")
    if train_store is not None:
        if int(train_store.attrs.get("num_classes", c)) != c:
            raise ConfigError(f"{train_store.path} and {val_store.path} disagree on the number "
                              f"of classes")
        check_disjoint(train_store.ids, val_store.ids, names=(tsplit, esplit))
    if folds_file is None and dataset not in ("pascal", "coco") and attrs.get("root"):
        cand = Path(attrs["root"]) / FOLDS_FILE_NAME
        folds_file = cand if cand.is_file() else None
    n_f = num_dataset_folds(dataset, folds_file=folds_file)
    fold_list = list(range(n_f)) if not folds else [int(f) for f in folds]
    # the validation seed only where a model is trained (derive_test_episodes makes it later)
    seeds = list(seeds) if seeds else ([default_seed(protocol)]
                                       + ([VAL_SEED] if train_store is not None else []))
    e = default_episode_count(dataset, protocol) if n_episodes is None else int(n_episodes)
    e_text = "" if e is not None else " (one per test image)"

    def name(k: int) -> str:
        return names[k - 1] if 0 < k <= len(names) else str(k)

    out_dir = episodes_dir(dataset, cache_dir=cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fold_info = []
    for f in range(n_f):
        test, train = fold_classes(dataset, c, f, coco_split=coco_split, folds_file=folds_file,
                                   class_names=names)
        fold_info.append({"fold": f, "test_classes": test.tolist(),
                          "test_names": [name(k) for k in test],
                          "train_classes": train.tolist(), "train_names": [name(k) for k in train]})
    for f in fold_list:
        _check_fold(f, n_f, dataset)
    kind = split_kind(dataset, coco_split=coco_split, folds_file=folds_file)
    stores = {esplit: {"path": str(val_store.path), "n": val_store.n,
                       "ids_hash": ids_hash(val_store.ids)}}
    if train_store is not None:
        stores[tsplit] = {"path": str(train_store.path), "n": train_store.n,
                          "ids_hash": ids_hash(train_store.ids)}
    folds_path = out_dir / "folds.json"
    if folds_path.is_file():  # keep the other training store when the folds did not change
        old = json.loads(folds_path.read_text())
        if old.get("folds") == fold_info and old.get("min_pixels") == min_pixels:
            stores = {**old.get("stores", {}), **stores}
        else:
            echo(f"note: {folds_path} described other folds or min_pixels; episode files "
                 f"built for those will be refused by the loaders until rebuilt")
    write_json_atomic(folds_path, {
        "dataset": dataset, "split_kind": kind, "num_classes": c, "class_names": names,
        "min_pixels": min_pixels, "folds_file": str(folds_file) if folds_file else None,
        "eval_split": esplit, "folds": fold_info, "stores": stores, "config": dict(config or {}),
        **provenance({"protocol": protocol, "shots": list(shots), "seeds": seeds,
                      "episodes": e, "drop_novel_images": drop_novel_images,
                      "train_set": tsplit if train_store is not None else None,
                      "coco_split": coco_split})})
    echo(f"{dataset}: {kind}, {c} classes, min_pixels {min_pixels}; "
         + (f"train store {tsplit} ({train_store.n} images), " if train_store is not None
            else "no training lists, ")
         + f"{esplit} store ({val_store.n} images) -> {out_dir}")

    summary: dict[str, Any] = {"dir": str(out_dir), "train": {}, "test": {}}
    vhash = ids_hash(val_store.ids)
    thash = ids_hash(train_store.ids) if train_store is not None else None
    for f in fold_list:
        test = np.asarray(fold_info[f]["test_classes"], dtype=np.int32)
        train = np.asarray(fold_info[f]["train_classes"], dtype=np.int32)
        echo(f"fold {f}: test {_names_line([name(k) for k in test])}")
        if train_store is not None:
            tl = training_list(tcp, train, test_classes=test, min_pixels=min_pixels,
                               drop_novel_images=drop_novel_images)
            path = out_dir / train_list_name(f, train_set=tsplit,
                                             drop_novel_images=drop_novel_images)
            _save_npz_atomic(path, {**tl, "train_classes": train, "test_classes": test,
                                    "fold": f, "min_pixels": min_pixels,
                                    "drop_novel_images": drop_novel_images, "split": tsplit,
                                    "ids_hash": thash, "dataset": dataset})
            per_class = np.diff(tl["class_indptr"])[1:]
            summary["train"][f] = {"path": str(path), "images": int(len(tl["image_index"])),
                                   "pairs": int(len(tl["classes"])),
                                   "per_class": {int(k): int(per_class[k - 1]) for k in train}}
            echo(f"  train list ({'BAM: novel images dropped' if drop_novel_images else 'PFENet: novel pixels = background'}): "
                 f"{len(tl['image_index'])} images, {len(tl['classes'])} (image, class) pairs")
            echo("  per class: " + _names_line([f"{name(k)} {per_class[k - 1]}" for k in train]))
        val_counts = usable_classes(vcp, min_pixels=min_pixels)[:, test - 1].sum(0)
        echo(f"  {esplit} images per test class (>= {min_pixels} px): "
             + _names_line([f"{name(k)} {m}" for k, m in zip(test, val_counts, strict=True)]))
        for k in shots:
            for s in seeds:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", EpisodeWarning)
                    ep = _test_episodes(val_store, vcp, dataset=dataset, protocol=protocol,
                                        test=test, shot=int(k), n_episodes=n_episodes,
                                        seed=int(s), min_pixels=min_pixels)
                for w in caught:  # recorded in the file too (skipped_classes)
                    echo(f"  warning: {w.message}")
                path = out_dir / episode_file_name(f, int(k), seed=int(s), protocol=protocol)
                _save_npz_atomic(path, {**ep, "test_classes": test, "fold": f, "shot": int(k),
                                        "seed": int(s), "protocol": protocol,
                                        "min_pixels": min_pixels, "split": esplit,
                                        "ids_hash": vhash, "dataset": dataset})
                st = episode_stats(ep["query"], ep["support"], ep["cls"])
                summary["test"][(f, int(k), int(s))] = {"path": str(path), **st,
                                                        "skipped": ep["skipped_classes"].tolist()}
                echo(f"  test {k}-shot seed {s} ({protocol}): {st['episodes']} episodes"
                     f"{e_text}, "
                     f"{st['distinct_queries']} distinct queries (list {int(ep['n_queries'])}), "
                     f"{st['distinct_supports']} distinct supports (max uses "
                     f"{st['support_uses_max']}); per class: "
                     + _names_line([f"{name(q)} {v}" for q, v in st["episodes_per_class"].items()])
                     + (f"; skipped {[name(q) for q in ep['skipped_classes']]}"
                        if ep["skipped_classes"].size else ""))
    return summary


def _names_line(items: Sequence[str], limit: int = 24) -> str:
    """``a, b, c`` or, for long lists (FSS-1000's 240 classes), the first ``limit`` and a count."""
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


# ========================================================================================
# loaders (what the trainer and the evaluator call)
# ========================================================================================

def _check_current(data: dict, path: Path, dataset: str, split: str, cache_dir, command: str,
                   fold: int) -> None:
    from pipeline.store import StoreError

    store = _open_masks(dataset, split, cache_dir)
    current = ids_hash(store.ids)
    if data.get("ids_hash") != current:
        raise StoreError(f"{path} was built from another version of the mask store {store.path} "
                         f"(its image ids changed); rebuild the episodes with: {command}")
    folds_path = path.parent / "folds.json"
    if folds_path.is_file():
        info = json.loads(folds_path.read_text())
        folds = info.get("folds", [])
        if fold < len(folds) and folds[fold]["test_classes"] != np.asarray(
                data["test_classes"]).tolist():
            raise StoreError(f"{path} holds other test classes than {folds_path} says for fold "
                             f"{fold} (the fold split changed); rebuild with: {command}")


def load_training_list(dataset: str, fold: int, *, cache_dir=None, drop_novel_images: bool = False,
                       train_set: str | None = None) -> dict[str, Any]:
    """Load the training list of one fold (written by ``qgnet-prep episodes``).

    Returns the arrays of :func:`training_list` plus ``fold``, ``train_classes``,
    ``test_classes`` (the trainer maps their pixels to background), ``min_pixels``,
    ``drop_novel_images``, ``split`` (the mask store the indices point into), ``ids_hash``
    and ``path``.

    Raises
    ------
    FileNotFoundError
        No such file; the message holds the ``qgnet-prep episodes`` command.
    StoreError
        The mask store changed since the file was written.
    """
    from pipeline.cache import episodes_dir

    tsplit = train_split_name(dataset, train_set)
    path = episodes_dir(dataset, cache_dir=cache_dir) / train_list_name(
        fold, train_set=tsplit, drop_novel_images=drop_novel_images)
    command = _episodes_command(dataset, cache_dir, fold=fold,
                                pascal_train_set="aug" if tsplit == "aug" else None,
                                drop_novel_images=drop_novel_images)
    if not path.is_file():
        raise FileNotFoundError(f"no training list at {path}; build it with: {command}")
    data = _load_npz(path)
    _check_current(data, path, dataset, tsplit, cache_dir, command, fold)
    data["path"] = str(path)
    return data


def load_test_episodes(dataset: str, fold: int, shot: int, *, seed: int = DEFAULT_SEED,
                       protocol: str = "pfenet", cache_dir=None) -> dict[str, Any]:
    """Load fixed test episodes (loaded whole; indices into the val mask store).

    Returns ``query`` (E,), ``support`` (E, K), ``cls`` (E,), ``test_classes``,
    ``skipped_classes``, ``seed``, ``protocol``, ``shot``, ``fold``, ``min_pixels``,
    ``ids_hash``, ``path``. HSNet's episodes use ``seed=0``.

    Raises
    ------
    FileNotFoundError
        No such file; the message holds the ``qgnet-prep episodes`` command.
    StoreError
        The val mask store changed since the file was written.
    """
    from pipeline.cache import episodes_dir

    path = episodes_dir(dataset, cache_dir=cache_dir) / episode_file_name(
        fold, shot, seed=seed, protocol=protocol)
    command = _episodes_command(dataset, cache_dir, fold=fold, shot=shot, seed=seed,
                                protocol=protocol)
    if not path.is_file():
        raise FileNotFoundError(f"no test episodes at {path}; build them with: {command}")
    data = _load_npz(path)
    _check_current(data, path, dataset, str(data.get("split", "val")), cache_dir, command, fold)
    data["path"] = str(path)
    return data


def derive_test_episodes(dataset: str, fold: int, shot: int, *, seed: int,
                         like_seed: int | None = None, protocol: str = "pfenet",
                         cache_dir=None) -> dict[str, Any]:
    """Load the episodes of ``seed``, writing them first if missing, with the settings of the
    existing file of ``like_seed`` (default: the protocol's test seed): same val store,
    test classes, episode count and ``min_pixels``; only the seed differs.

    Lets the trainer validate on another seed than the test episodes (``VAL_SEED``) on a
    cache built before that file was part of ``qgnet-prep episodes``' defaults.
    """
    from pipeline.cache import episodes_dir

    try:
        return load_test_episodes(dataset, fold, shot, seed=seed, protocol=protocol,
                                  cache_dir=cache_dir)
    except FileNotFoundError:
        like = load_test_episodes(dataset, fold, shot, protocol=protocol, cache_dir=cache_dir,
                                  seed=default_seed(protocol) if like_seed is None else like_seed)
    split = str(like.get("split", "val"))
    store = _open_masks(dataset, split, cache_dir)
    test = np.asarray(like["test_classes"], dtype=np.int32)
    ep = _test_episodes(store, store.extra("class_pixels"), dataset=dataset, protocol=protocol,
                        test=test, shot=int(shot), n_episodes=len(like["query"]), seed=int(seed),
                        min_pixels=int(like["min_pixels"]), warn=False)
    path = episodes_dir(dataset, cache_dir=cache_dir) / episode_file_name(
        fold, shot, seed=seed, protocol=protocol)
    _save_npz_atomic(path, {**ep, "test_classes": test, "fold": int(fold), "shot": int(shot),
                            "seed": int(seed), "protocol": protocol,
                            "min_pixels": int(like["min_pixels"]), "split": split,
                            "ids_hash": like["ids_hash"], "dataset": dataset})
    return load_test_episodes(dataset, fold, shot, seed=seed, protocol=protocol,
                              cache_dir=cache_dir)


def ensure_test_episodes(dataset: str, fold: int, shot: int, *, seed: int, protocol: str,
                         cache_dir=None, echo: Callable[[str], None] = print
                         ) -> tuple[dict[str, Any], bool]:
    """Load the test episodes of (``fold``, ``shot``, ``seed``, ``protocol``), writing the
    file first when it is missing; returns ``(episodes, made)``.

    A file is made from the evaluation mask store alone (no training store, no training
    list). Where ``qgnet-prep episodes`` already wrote a ``folds.json`` for that store, the
    new file takes its fold classes, ``min_pixels`` and, for the same protocol, its episode
    count, so it sits beside the files made there (a 5-shot file beside the 1-shot one);
    otherwise :func:`build_episodes` makes it with the benchmark's defaults
    (:func:`pipeline.benchmarks.benchmark_for`). What ``qgnet-eval bench`` calls.

    Raises
    ------
    StoreError
        No complete evaluation mask store (the message holds the ``qgnet-prep masks``
        command), or a ``folds.json`` / episode file made from another version of it.
    ConfigError
        No episode can be drawn (too few images of every test class for ``shot``), a fold
        or protocol the dataset does not have.
    """
    from pipeline.benchmarks import benchmark_for
    from pipeline.cache import episodes_dir
    from pipeline.store import StoreError

    try:
        return load_test_episodes(dataset, fold, shot, seed=seed, protocol=protocol,
                                  cache_dir=cache_dir), False
    except FileNotFoundError:
        pass
    bench = benchmark_for(dataset)
    reference_rule(dataset, protocol)  # refuses a protocol the dataset does not take
    folds_path = episodes_dir(dataset, cache_dir=cache_dir) / "folds.json"
    if not folds_path.is_file():
        build_episodes(dataset, cache_dir=cache_dir, folds=[fold], shots=[shot], seeds=[seed],
                       protocol=protocol, training_lists=False, echo=echo)
        return load_test_episodes(dataset, fold, shot, seed=seed, protocol=protocol,
                                  cache_dir=cache_dir), True
    info = json.loads(folds_path.read_text())
    esplit = str(info.get("eval_split") or bench.eval_split)
    store = _open_masks(dataset, esplit, cache_dir)
    command = _episodes_command(dataset, cache_dir, fold=fold, shot=shot, seed=seed,
                                protocol=protocol)
    recorded = info.get("stores", {}).get(esplit, {}).get("ids_hash")
    if recorded is not None and recorded != ids_hash(store.ids):
        raise StoreError(f"{folds_path} was built from another version of the mask store "
                         f"{store.path}; rebuild the episodes with: {command}")
    folds = info.get("folds", [])
    _check_fold(int(fold), len(folds), dataset)
    test = np.asarray(folds[int(fold)]["test_classes"], dtype=np.int32)
    min_pixels = int(info.get("min_pixels", DEFAULT_MIN_PIXELS))
    params = info.get("params", {})
    n_episodes = params.get("episodes") if params.get("protocol") == protocol else None
    ep = _test_episodes(store, store.extra("class_pixels"), dataset=dataset, protocol=protocol,
                        test=test, shot=int(shot), n_episodes=n_episodes, seed=int(seed),
                        min_pixels=min_pixels, warn=False)
    path = episodes_dir(dataset, cache_dir=cache_dir) / episode_file_name(
        int(fold), int(shot), seed=int(seed), protocol=protocol)
    _save_npz_atomic(path, {**ep, "test_classes": test, "fold": int(fold), "shot": int(shot),
                            "seed": int(seed), "protocol": protocol, "min_pixels": min_pixels,
                            "split": esplit, "ids_hash": ids_hash(store.ids),
                            "dataset": dataset})
    st = episode_stats(ep["query"], ep["support"], ep["cls"])
    echo(f"{dataset}: wrote {path.name} ({st['episodes']} episodes, {protocol}, the classes "
         f"and min_pixels of {folds_path.name})"
         + (f"; skipped classes {ep['skipped_classes'].tolist()} (fewer than {shot + 1} "
            f"usable images)" if ep["skipped_classes"].size else ""))
    return load_test_episodes(dataset, fold, shot, seed=seed, protocol=protocol,
                              cache_dir=cache_dir), True


# ========================================================================================
# description (`qgnet-prep info`)
# ========================================================================================

def describe(path: str | os.PathLike) -> str:
    """Human-readable summary of an episodes folder, ``folds.json`` or one ``.npz`` file."""
    path = Path(path)
    if path.is_dir():
        parts = []
        if (path / "folds.json").is_file():
            parts.append(describe(path / "folds.json"))
        parts += [describe(p) for p in sorted(path.glob("*.npz"))]
        return "\n".join(parts) if parts else f"{path}: no episode files"
    if path.suffix == ".json":
        info = json.loads(path.read_text())
        lines = [f"{path}: {info.get('dataset')} {info.get('split_kind')}, "
                 f"{info.get('num_classes')} classes, min_pixels {info.get('min_pixels')}"]
        for f in info.get("folds", []):
            lines.append(f"  fold {f['fold']}: test {f['test_classes']} "
                         f"({', '.join(f['test_names'])})")
        for split, s in info.get("stores", {}).items():
            lines.append(f"  store {split}: {s['n']} images, ids {s['ids_hash']} ({s['path']})")
        return "\n".join(lines)
    d = _load_npz(path)
    if "query" in d:
        st = episode_stats(d["query"], d["support"], d["cls"])
        lines = [f"{path.name}: fold {d['fold']}, {d['shot']}-shot, {d['protocol']} seed "
                 f"{d['seed']}: {st['episodes']} episodes, {st['distinct_queries']} distinct "
                 f"queries (query list {d.get('n_queries')})",
                 f"  episodes per class: {st['episodes_per_class']}",
                 f"  supports: {st['support_slots']} slots, {st['distinct_supports']} distinct "
                 f"images, used {st['support_uses_mean']} times on average, at most "
                 f"{st['support_uses_max']}"]
        if np.asarray(d["skipped_classes"]).size:
            lines.append(f"  skipped classes (too few images): {d['skipped_classes'].tolist()}")
        return "\n".join(lines)
    per_class = np.diff(d["class_indptr"])
    counts = {int(k): int(per_class[k]) for k in d["train_classes"]}
    return "\n".join([
        f"{path.name}: fold {d['fold']}, split {d['split']}, "
        f"{'novel images dropped' if d['drop_novel_images'] else 'novel pixels as background'}: "
        f"{len(d['image_index'])} images, {len(d['classes'])} (image, class) pairs",
        f"  test classes {d['test_classes'].tolist()}",
        f"  images per training class: {counts}"])
