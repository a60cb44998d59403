"""Streaming input for prior pretraining: image pairs with their superpixel patch maps.

One sample is one image read through its dataset reader (JPEG decoded in a DataLoader
worker), its patch map read from the superpixel store, and two augmented views of both::

    image (H x W x 3 uint8) + patch map (H x W uint16, 1..n, 0 = none)
        --augment-on cpu:    PairedAugment twice -> im_q, im_k (3 x S x S float32),
                                                    map_q, map_k (S x S int64)
        --augment-on device: PairedCrop twice    -> im_q, im_k (3 x S x S uint8),
                                                    map_q, map_k (S x S int16),
                                                    aug_q, aug_k (12 float32 parameters)
                             -> model.prior.device_augment on the training device

Batches are made by torch's default collate, which writes them straight into shared memory
in the workers (the device path ships 4x fewer bytes per image than the CPU path:
0.50 MB instead of 2.0 MB at crop 224).

Determinism: every random draw of a sample comes from its own generator seeded from
``(seed, epoch, index)``, never from the global or the worker RNG, so the data of a step
does not depend on the number of workers nor on where a run was resumed. The sampler
(:class:`EpochSampler`) yields ``(epoch, index)`` pairs, so persistent workers learn the
epoch without being told.

Failures: store rows with ``hw == (0, 0)`` (images the superpixel stage could not read) are
left out when the dataset is built. An image that fails to read at train time (or whose
size no longer matches its patch map) is replaced by the next readable image of the list,
deterministically, with a warning; the sample carries ``skipped`` (how many images were
passed over) so the trainer can count them in ``metrics.jsonl``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler, default_collate

from pipeline.store import ShardedStore, StoreError

MAX_SUBSTITUTES = 16  # consecutive unreadable images tolerated before giving up


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``epoch`` (independent streams per triple)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def check_patch_store(store: ShardedStore, *, dataset: str, split: str, split_ids: Sequence[str],
                      hint: str) -> None:
    """Raise :class:`StoreError` unless ``store`` holds the patch maps of ``split_ids``.

    Checks the recorded dataset and split (a store of another dataset would silently pair
    images with wrong maps), that every shard was written, and that every image id of the
    split has a row.
    """
    made = (store.attrs.get("dataset"), store.attrs.get("split"))
    if made != (dataset, split):
        raise StoreError(f"patch store {store.path} was made for dataset {made[0]!r} split "
                         f"{made[1]!r}, but this run trains on dataset {dataset!r} split {split!r}; "
                         f"build the right one with: {hint}")
    pending = store.pending_shards()
    if pending:
        raise StoreError(f"patch store {store.path} is incomplete ({len(pending)} of "
                         f"{store.n_shards} shards not written); finish it with: {hint}")
    have = set(store.ids)
    missing = [i for i in split_ids if i not in have]
    if missing:
        raise StoreError(f"patch store {store.path} has no patch map for {len(missing)} of the "
                         f"{len(split_ids)} images of {dataset!r} split {split!r} (e.g. "
                         f"{missing[:3]}); it was made from other images. Rebuild it with: {hint}")


class PriorPairs(torch.utils.data.Dataset):
    """Pairs of augmented views of an image and its patch map, for MoCo pretraining.

    Parameters
    ----------
    dataset : pipeline.datasets.Dataset
        The reader (picklable; copied into every worker).
    store_path : path
        Superpixel store (``kind="superpixels"``) whose ids cover ``ids``.
    ids : sequence of str
        Image ids to train on, in order (the sampler permutes positions in this list).
        Ids whose store row failed (``hw == (0, 0)``) are dropped; see :attr:`dropped`.
    augment : callable
        ``augment(image_uint8, patch_map, generator=)``, called twice per sample:
        ``model.prior.augment.PairedAugment`` (-> ``(3 x S x S float, S x S int64)``) or
        ``model.prior.augment.PairedCrop`` (-> ``(3 x S x S uint8, S x S int16, 12 float)``,
        the device path; the parameters become ``aug_q``/``aug_k``).
    seed : int
        Base seed of the per-sample generators.

    Items are indexed by ``(epoch, index)`` (what :class:`EpochSampler` yields) or by a
    plain ``index`` (epoch 0) and are flat dicts::

        im_q, im_k   3 x S x S float32     the two views (uint8 crops on the device path)
        map_q, map_k S x S int64           patch ids of each view (0 = none; int16 bits
                                           of the uint16 ids on the device path)
        aug_q, aug_k 12 float32            device path only: VIEW_PARAMS of each view
        index        () int64              position in ``ids`` of the image actually used
        row          () int64              its row in the store
        skipped      () int64              unreadable images passed over for this sample
    """

    def __init__(self, dataset, store_path: str | Path, ids: Sequence[str], *, augment,
                 seed: int = 0):
        self.dataset = dataset
        self.store_path = Path(store_path)
        self.augment = augment
        self.seed = int(seed)
        store = ShardedStore.open(self.store_path, kind="superpixels")
        rows = np.array([store.index(i) for i in ids], dtype=np.int64)
        ok = store.hw[rows, 0] > 0 if len(rows) else np.zeros(0, bool)
        self.dropped = [i for i, good in zip(ids, ok, strict=True) if not good]
        self.ids = [i for i, good in zip(ids, ok, strict=True) if good]
        self.rows = rows[ok]
        self.hw = store.hw[self.rows].copy()  # n x 2 true sizes of the patch maps
        self._store: ShardedStore | None = None  # opened lazily, in each worker
        if not self.ids:
            raise StoreError(f"no usable image: all {len(ids)} listed images failed in the patch "
                             f"store {self.store_path}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None  # never pickle an open zarr array
        return state

    @property
    def store(self) -> ShardedStore:
        if self._store is None:
            self._store = ShardedStore.open(self.store_path, kind="superpixels")
        return self._store

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` (H x W x 3 uint8) and its patch map (H x W uint16), unaugmented."""
        image = self.dataset.load_image(self.ids[i])
        pmap = self.store.get(int(self.rows[i]))
        if image.shape[:2] != pmap.shape:
            raise OSError(f"image {self.ids[i]!r} is {image.shape[:2]} but its patch map is "
                          f"{pmap.shape}; the image changed after the store was built")
        return image, pmap

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        for skipped in range(MAX_SUBSTITUTES + 1):
            i = (index + skipped) % len(self.ids)
            try:
                image, pmap = self.read(i)
                break
            except Exception as err:  # noqa: BLE001 - any unreadable file is skipped
                warnings.warn(f"prior data: skipping image {self.ids[i]!r}: {err}", stacklevel=1)
        else:
            raise RuntimeError(f"{MAX_SUBSTITUTES + 1} consecutive images from {self.ids[index]!r} "
                               f"could not be read; check the dataset at {self.dataset.root}")
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        sample = {}
        for v in ("q", "k"):  # q first: the generator's draws are ordered
            im, pm, *params = self.augment(image, pmap, generator=g)
            sample[f"im_{v}"], sample[f"map_{v}"] = im, pm
            if params:
                sample[f"aug_{v}"] = params[0]
        return {**sample, "index": torch.tensor(i), "row": torch.tensor(int(self.rows[i])),
                "skipped": torch.tensor(skipped)}


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` and can start mid-epoch.

    The permutation of an epoch is ``torch.randperm`` seeded with ``seed + epoch`` (as in
    ``DistributedSampler``); rank ``r`` of ``world`` takes every ``world``-th index. With
    ``start=k`` the first ``k`` indices of this rank are skipped, which is how a resumed run
    continues exactly where the checkpoint was taken. A single process is ``world=1``.
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        class _Len:  # DistributedSampler only needs len(dataset)
            def __len__(self):
                return n

        super().__init__(_Len(), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of flat sample dicts into one flat batch dict (torch's default collate:
    inside a worker it stacks straight into shared memory, so the batch is not copied again
    to cross the process boundary).

    With patch maps it adds ``"max_id"`` (a python int, the largest id of ``map_q`` and
    ``map_k``), computed here on the worker's CPU so that the training step never reads it
    back from the device (issue 13 §3).
    """
    batch = default_collate(samples)
    if "map_q" in batch and "map_k" in batch:
        batch["max_id"] = int(max(batch["map_q"].max(), batch["map_k"].max()))
    return batch
