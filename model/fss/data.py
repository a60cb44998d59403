"""Episodic datasets: training episodes drawn on the fly, test episodes from fixed files.

Images come from the dataset reader (``open_dataset(...).load_image``), masks only from
the mask store (``qgnet-prep masks``), episode indices only from the episode files
(``qgnet-prep episodes``). The mask store is opened and the image root resolved when the
dataset is made (in the main process, so that a missing store or image folder fails before
anything runs); readers are opened lazily, once per DataLoader worker (store and reader are
dropped when the dataset is pickled).

Where the images are read from (:func:`images_root`): ``--root`` when given, else the
dataset root recorded in the mask store when it was built. A cache folder copied or moved
elsewhere keeps pointing at that recorded root: the root used is printed when it is not the
dataset's default under this cache, and a recorded root that no longer exists is refused
with the ``--root`` fix instead of failing on the first image.

Training item (PFENet ``SemData.__getitem__``, mode train): item ``i`` of the fold's
training list is the query image; its class is drawn uniformly among the training classes
*present* in it (any pixel, as PFENet's ``np.unique``); K distinct supports are drawn
uniformly from the images where that class is usable (>= 2048 pixels, the training list's
``class_images``), never the query. Every image is augmented independently
(:func:`model.fss.transforms.train_transform`).

An image that cannot be read any more (truncated or deleted after ``qgnet-prep masks``)
does not stop training: the item is replaced by the next one of the list, deterministically
(item ``i + 1``, ``i + 2``, ... with the same seed), with a warning; the item's ``skipped``
counts the replacements and the trainer logs their total in metrics.jsonl
(``skipped_images``), as the prior loader does.

Every item is a flat dict of tensors; the loader's sampler hands over ``(index, seed)``
pairs so that an item depends on its seed only (exact resume, any number of workers)::

    query          3 x S x S float32          label          S x S int64 (0 / 1 / 255)
    supports       K x 3 x S x S              support_masks  K x S x S int64
    cls            ()  int64 (1-based class)  query_index, support_index: store indices
    skipped        ()  int64 (training items: unreadable episodes passed over)

Test items add ``label`` (the query's binarised label after the test resize, S x S, for
the validation loss), ``orig_label`` (the label the scoring reads: at original resolution,
or HSNet's square; the collate pads it with 255 to the batch's largest size) and
``orig_hw`` (2,, its size).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from model.fss import transforms as T
from pipeline.errors import DatasetError, ImageReadError

MAX_SUBSTITUTES = 16  # consecutive unreadable training episodes before giving up


_ANNOUNCED: set[tuple[str, str]] = set()  # (store, root) pairs already printed by this process


def images_root(store, dataset: str, root: str | None = None, *,
                cache_dir: str | None = None) -> str | None:
    """The folder images are read from for a mask store: ``root`` when given, else the
    root recorded in the store (``None``: the reader's default, for stores without one).

    Raises :class:`DatasetError` when the recorded root no longer exists (a cache folder
    copied to another machine, a dataset moved), naming it and the ``--root`` fix. The
    recorded root is printed (once per process) where it is not the dataset's default
    under this cache, so a copied cache does not silently read another folder.
    """
    from pipeline.datasets import dataset_root

    if root:
        return root
    recorded = store.attrs.get("root")
    if not recorded:
        return None
    here = str(dataset_root(dataset, None, cache_dir=cache_dir))
    if not os.path.isdir(recorded):
        hint = f" (e.g. --root {here}, the {dataset} data under this cache)" if (
            os.path.isdir(here) and here != os.path.realpath(recorded)) else ""
        raise DatasetError(f"the mask store {store.path} was made from the images in {recorded}, "
                           f"which no longer exists (a copied or moved cache or dataset?); pass "
                           f"--root DIR where those images are now{hint}")
    key = (str(store.path), str(recorded))
    if os.path.realpath(recorded) != here and key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(f"images: {recorded} (the dataset root recorded in {store.path}; --root DIR "
              f"reads them from elsewhere)", file=sys.stderr, flush=True)
    return str(recorded)


class _StoreMixin:
    """The mask store (opened now) and the image reader (opened lazily, per process)."""

    ignore_classes: np.ndarray | None = None  # classes whose pixels :meth:`load` makes 255

    def _init_sources(self, *, dataset: str, split: str, root: str | None, cache_dir: str | None):
        self.dataset_name, self.split, self.cache_dir = dataset, split, cache_dir
        self._store = None
        self._reader = None
        self.root = images_root(self.store, dataset, root, cache_dir=cache_dir)

    @property
    def store(self):
        if self._store is None:
            from pipeline.mask_stage import locate_mask_store

            self._store = locate_mask_store(self.dataset_name, self.split, cache_dir=self.cache_dir)
        return self._store

    @property
    def reader(self):
        if self._reader is None:
            from pipeline.datasets import open_dataset

            self._reader = open_dataset(self.dataset_name, self.root, cache_dir=self.cache_dir)
        return self._reader

    def load(self, index: int, cls: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H x W x 3 uint8) and binarised mask of store image ``index`` (pixels of
        ``self.ignore_classes``, if any, become 255 first). A store of object masks
        (``image_class``: FSS-1000, the cross-domain sets) holds 0 / 1 / 255 per image: its
        object is ``cls`` when the image's class is."""
        image = self.reader.load_image(self.store.ids[index])
        mask = self.store.get(int(index))
        if image.shape[:2] != mask.shape:
            raise ImageReadError(f"image {self.store.ids[index]!r} is {image.shape[:2]} but its mask in "
                             f"{self.store.path} is {mask.shape}; rebuild the mask store")
        if self.image_class is not None:
            label = T.binarize(mask, 1)  # the image's object -> 1, 255 kept
            if int(self.image_class[int(index)]) != int(cls):  # another class: no object
                label[label == 1] = 0
            return image, label
        if self.ignore_classes is not None and len(self.ignore_classes):
            mask = np.where(np.isin(mask, self.ignore_classes), T.IGNORE, mask).astype(mask.dtype)
        return image, T.binarize(mask, cls)

    @property
    def image_class(self) -> np.ndarray | None:
        """(N,) class of each image of an object-mask store, else None (loaded once)."""
        if not hasattr(self, "_image_class"):
            store = self.store
            self._image_class = (store.extra("image_class")
                                 if "image_class" in store.attrs.get("extras", []) else None)
        return self._image_class

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = state["_reader"] = None
        state.pop("_image_class", None)
        return state


def draw_supports(pool: np.ndarray, query: int, shot: int, rng: np.random.Generator) -> np.ndarray:
    """``shot`` distinct images of ``pool`` other than ``query``.

    PFENet re-draws until distinct; with fewer candidates than ``shot`` (tiny datasets)
    repeats are allowed rather than looping forever.
    """
    cand = pool[pool != query]
    if len(cand) == 0:
        raise ValueError(f"no support image other than the query {query} for this class")
    return rng.choice(cand, size=shot, replace=len(cand) < shot)


class TrainEpisodes(_StoreMixin, Dataset):
    """Training episodes of one fold (see the module docstring).

    Parameters
    ----------
    train_list : dict
        :func:`pipeline.episode_stage.load_training_list`'s result.
    shot : int
    crop : int
    scale : (float, float)
    dataset, root, cache_dir : where images and the train mask store are.
    novel_pixels : ``"background"`` (PFENet: test-class pixels of training images are
        background) or ``"ignore"`` (they become 255 and carry no loss).
    """

    def __init__(self, train_list: dict[str, Any], *, shot: int, crop: int,
                 scale: Sequence[float], dataset: str, root: str | None = None,
                 cache_dir: str | None = None, novel_pixels: str = "background"):
        if novel_pixels not in ("background", "ignore"):
            raise ValueError(f"novel_pixels must be 'background' or 'ignore', got {novel_pixels!r}")
        self.ignore_classes = (np.asarray(train_list["test_classes"], np.int64)
                               if novel_pixels == "ignore" else None)
        self._init_sources(dataset=dataset, split=str(train_list.get("split", "train")),
                           root=root, cache_dir=cache_dir)
        tl = train_list
        self.image_index = np.asarray(tl["image_index"], np.int64)
        if "present_indptr" in tl:  # PFENet: any training class present in the query
            self.cls_indptr, self.cls = np.asarray(tl["present_indptr"]), np.asarray(tl["present_classes"])
        else:
            self.cls_indptr, self.cls = np.asarray(tl["classes_indptr"]), np.asarray(tl["classes"])
        self.class_indptr = np.asarray(tl["class_indptr"])
        self.class_images = np.asarray(tl["class_images"])
        self.shot, self.crop, self.scale = int(shot), int(crop), tuple(float(s) for s in scale)
        if len(self.image_index) == 0:
            raise ValueError(f"the training list {tl.get('path', '')} is empty")

    def __len__(self) -> int:
        return len(self.image_index)

    def pick(self, i: int, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
        """(query store index, class, K support store indices) of item ``i``."""
        q = int(self.image_index[i])
        classes = self.cls[self.cls_indptr[i]:self.cls_indptr[i + 1]]
        c = int(classes[rng.integers(len(classes))])
        pool = self.class_images[self.class_indptr[c]:self.class_indptr[c + 1]]
        return q, c, draw_supports(np.asarray(pool, np.int64), q, self.shot, rng)

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, item)
        for skipped in range(MAX_SUBSTITUTES + 1):
            j = (int(i) + skipped) % len(self)
            try:
                out = self.episode(j, int(seed))
                break
            except OSError as err:  # ImageReadError: truncated / missing image, size mismatch
                warnings.warn(f"few-shot data: skipping training episode {j}: {err}",
                              stacklevel=1)
        else:
            raise DatasetError(f"{MAX_SUBSTITUTES + 1} consecutive training episodes from item "
                               f"{i} could not be read; check the images of {self.dataset_name} "
                               f"(root {self.root}) and rebuild "
                               f"with qgnet-prep masks")
        out["skipped"] = torch.tensor(skipped)
        return out

    def episode(self, i: int, seed: int) -> dict[str, torch.Tensor]:
        """Item ``i`` drawn with ``seed`` (raises ImageReadError for an unreadable image)."""
        rng = np.random.default_rng(int(seed))
        q, c, sup = self.pick(int(i), rng)
        image, label = T.train_transform(*self.load(q, c), rng, crop=self.crop, scale=self.scale)
        s_imgs, s_masks = [], []
        for s in sup:
            si, sm = T.train_transform(*self.load(int(s), c), rng, crop=self.crop, scale=self.scale)
            s_imgs.append(si)
            s_masks.append(sm)
        return {
            "query": torch.from_numpy(image),  # 3 x S x S
            "label": torch.from_numpy(label.astype(np.int64)),  # S x S
            "supports": torch.from_numpy(np.stack(s_imgs)),  # K x 3 x S x S
            "support_masks": torch.from_numpy(np.stack(s_masks).astype(np.int64)),  # K x S x S
            "cls": torch.tensor(c),
            "query_index": torch.tensor(q),
            "support_index": torch.from_numpy(np.asarray(sup, np.int64)),
        }


class TestEpisodes(_StoreMixin, Dataset):
    """Fixed test episodes (``load_test_episodes``) with the test-time resize of a scoring.

    ``scoring`` (:data:`model.fss.metrics.SCORINGS`): ``"pfenet"`` / ``"exact"`` (default):
    PFENet's ``Resize`` onto a ``crop x crop`` canvas (:func:`model.fss.transforms.test_transform`),
    ``orig_label`` the original label. ``"hsnet"`` / ``"hsnet-original"``: HSNet's
    ``crop x crop`` square (:func:`model.fss.transforms.hsnet_transform`, ``crop`` = 400 in
    HSNet); ``orig_label`` is the label HSNet scores: the square's (nearest) for ``"hsnet"``,
    the original for ``"hsnet-original"`` (``use_original_imgsize``). Supports always get the
    query's resize. ``limit`` keeps the first N episodes.
    """

    def __init__(self, episodes: dict[str, Any], *, crop: int, dataset: str,
                 root: str | None = None, cache_dir: str | None = None,
                 limit: int | None = None, scoring: str = "pfenet"):
        from model.fss.metrics import SCORINGS

        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
        self._init_sources(dataset=dataset, split=str(episodes.get("split", "val")), root=root,
                           cache_dir=cache_dir)
        n = len(episodes["query"]) if not limit else min(int(limit), len(episodes["query"]))
        self.query = np.asarray(episodes["query"][:n], np.int64)
        self.support = np.asarray(episodes["support"][:n], np.int64).reshape(n, -1)
        self.cls = np.asarray(episodes["cls"][:n], np.int64)
        self.crop = int(crop)
        self.scoring = scoring

    def __len__(self) -> int:
        return len(self.query)

    def _resize(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.scoring.startswith("hsnet"):
            return T.hsnet_transform(image, label, size=self.crop)
        return T.test_transform(image, label, size=self.crop)

    def __getitem__(self, e: int) -> dict[str, torch.Tensor]:
        c = int(self.cls[e])
        image, orig = self.load(int(self.query[e]), c)
        img, lab = self._resize(image, orig)
        if self.scoring == "hsnet":  # HSNet scores at the square, against its resized label
            orig = lab
        s_imgs, s_masks = [], []
        for s in self.support[e]:
            si, sm = self._resize(*self.load(int(s), c))
            s_imgs.append(si)
            s_masks.append(sm)
        return {
            "query": torch.from_numpy(img),
            "label": torch.from_numpy(lab.astype(np.int64)),
            "supports": torch.from_numpy(np.stack(s_imgs)),
            "support_masks": torch.from_numpy(np.stack(s_masks).astype(np.int64)),
            "cls": torch.tensor(c),
            "orig_label": torch.from_numpy(orig.astype(np.int64)),  # H x W
            "orig_hw": torch.tensor(orig.shape),
            "episode": torch.tensor(e),
            "query_index": torch.tensor(int(self.query[e])),
            "support_index": torch.from_numpy(self.support[e].copy()),
        }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of item dicts; ``orig_label`` is padded with 255 to the largest size."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key == "orig_label":
            h = max(v.shape[0] for v in vals)
            w = max(v.shape[1] for v in vals)
            pad = torch.full((len(vals), h, w), T.IGNORE, dtype=vals[0].dtype)
            for j, v in enumerate(vals):
                pad[j, : v.shape[0], : v.shape[1]] = v
            out[key] = pad
        else:
            out[key] = torch.stack(vals)
    return out


class EpisodeSampler(Sampler):
    """Yields ``(index, seed)`` for one epoch: a permutation seeded by ``(seed, epoch)``,
    this rank's share (``rank::world``), from position ``start`` on (resume mid-epoch).

    The seed of each item is derived from ``(seed, epoch, position)``, so an item's
    augmentation and support draw do not depend on workers or on interruption.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.epoch, self.start = int(n), int(seed), int(epoch), int(start)
        self.rank, self.world, self.shuffle = int(rank), int(world), shuffle

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        # every rank gets the same number of items (DDP steps must match): drop the tail
        positions = np.arange(self.rank, (self.n // self.world) * self.world, self.world)
        for p in positions[self.start:]:
            # one 63-bit seed per (seed, epoch, position)
            s = int(np.random.default_rng([self.seed, self.epoch, int(p)]).integers(2**63 - 1))
            yield int(order[p]), s

    def __len__(self) -> int:
        return max(self.n // self.world - self.start, 0)
