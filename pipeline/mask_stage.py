"""Offline stage: decode every class mask of a split once into a sharded Zarr store.

    dataset.load_mask(id)  ->  masks        (H x W uint8: 0 bg, 1..C, 255 ignore)
                           ->  class_pixels (C+1,) int64: pixels of classes 0..C, 255 not counted

Store kind ``"masks"`` at ``mask_store_path(dataset, split)`` (docs/contracts.md), attrs
``dataset``, ``split``, ``class_names``, ``num_classes``, ``root``, ``params`` (``{"limit":
...}``) plus provenance.

Readers of one class per image (``dataset.image_classes``: FSS-1000 and the cross-domain
sets, :mod:`pipeline.datasets.imageclass`) give an object mask (0 / 1 / 255) and the image's
class; their stores keep that mask, the extra ``image_class`` (N,) int32 (0 for a failed
image) and the attribute ``image_classes: true``, and count the object's pixels in the
class's column of ``class_pixels``. FSS-1000's 1,000 classes would not fit a uint8 class
mask; the few-shot loader binarises such a mask with ``image_class``. ``limit`` is not part of the path (the contract fixes the path): a
store made with another ``--limit`` is refused; pass ``--out`` or ``--overwrite``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.cache import mask_store_path
from pipeline.errors import IGNORE, ConfigError
from pipeline.provenance import provenance
from pipeline.runner import RunReport, build_store, dataset_source
from pipeline.settings import format_command, option
from pipeline.store import ShardedStore

#: an image "has" a class when at least this many pixels show it (``qgnet-prep info``).
MIN_CLASS_PIXELS = 2048


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Options of ``qgnet-prep masks``."""

    dataset: str = "demo"
    root: str | None = None
    split: str = "train"
    workers: int = option(2, min=1)
    scheduler: str = "threads"
    limit: int | None = option(None, min=1)
    cache_dir: str | None = None
    out: str | None = None
    overwrite: bool = False
    max_failures: int = option(0, min=0)
    shard_size: int | None = option(None, min=1)
    progress: bool = True
    year: int | None = option(None, min=2014, max=2017)  # COCO only: 2014 or 2017
    train_json: str | None = None    # a COCO-style json per split (pipeline.datasets.spec)
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None


def mask_map(dataset, image_id: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mask (H x W uint8) and ``{"class_pixels": (C+1,) int64}`` of one image.

    The image itself is decoded too (and thrown away): a truncated JPEG whose header still
    reads must become a failure here, so that the episode builder never lists it and
    few-shot training never samples it.
    """
    c = dataset.num_classes
    image = np.asarray(dataset.load_image(image_id))  # raises ImageReadError when it can't decode
    mask = np.asarray(dataset.load_mask(image_id))
    if getattr(dataset, "image_classes", False):
        return _object_map(dataset, image_id, image, mask)
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {mask.shape}, expected H x W")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image is {image.shape[0]} x {image.shape[1]} but its mask is "
                         f"{mask.shape[0]} x {mask.shape[1]}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values {mask.min()}..{mask.max()} do not fit uint8")
        mask = mask.astype(np.uint8)
    counts = np.bincount(mask[mask != IGNORE].ravel(), minlength=c + 1)  # (>= C+1,)
    if counts.size > c + 1:
        raise ValueError(f"mask holds class id {counts.size - 1} but the dataset has {c} classes "
                         f"(ids 1..{c}, 255 = ignore)")
    return mask, {"class_pixels": counts.astype(np.int64)}


def _object_map(dataset, image_id: str, image: np.ndarray, mask: np.ndarray):
    """:func:`mask_map` of a one-class-per-image reader: the object mask (0 / 1 / 255) and
    ``{"class_pixels": (C+1,), "image_class": ()}``."""
    c, k = dataset.num_classes, int(dataset.image_class(image_id))
    if not 1 <= k <= c:
        raise ValueError(f"image class {k} is outside 1..{c}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image is {image.shape[0]} x {image.shape[1]} but its mask is "
                         f"{mask.shape[0]} x {mask.shape[1]}")
    bad = ~np.isin(mask, (0, 1, IGNORE))
    if bad.any():
        raise ValueError(f"object mask holds values {np.unique(mask[bad])[:5].tolist()} "
                         f"(expected 0, 1 and {IGNORE})")
    mask = mask.astype(np.uint8)
    counts = np.zeros(c + 1, dtype=np.int64)
    counts[0] = int((mask == 0).sum())
    counts[k] = int((mask == 1).sum())
    return mask, {"class_pixels": counts, "image_class": np.int32(k)}


def build_command(dataset: str, split: str, limit: int | None = None,
                  cache_dir: str | Path | None = None) -> str:
    """The ``qgnet-prep masks`` command that builds this store (quoted in messages)."""
    return format_command("qgnet-prep", "masks", dataset=dataset, split=split, limit=limit,
                          cache_dir=cache_dir)


def build_mask_store(dataset, *, split: str = "train", out: str | Path | None = None,
                     cache_dir: str | Path | None = None, workers: int = 2,
                     scheduler: str = "threads", limit: int | None = None,
                     overwrite: bool = False, shard_size: int | None = None, progress: bool = True,
                     root: str | Path | None = None, year: int | None = None
                     ) -> tuple[ShardedStore, RunReport]:
    """Build (or resume) the mask store of one split; arguments as
    :func:`pipeline.superpixel_stage.build_superpixel_store`.

    Returns ``(store, report)``. Raises ``ValueError`` (bad option) or ``StoreError`` (a
    store made with other settings at the path).
    """
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    limit = None if limit is None else int(limit)
    name, ds, data_root = dataset_source(dataset, root, cache_dir, year=year)
    path = Path(out) if out else mask_store_path(name, split, cache_dir=cache_dir)
    check = {"kind": "masks", "dataset": name, "split": split, "params": {"limit": limit}}

    def attrs(d):
        extra = {"image_classes": True} if getattr(d, "image_classes", False) else {}
        if getattr(d, "year", None):
            extra["year"] = int(d.year)
        return {**provenance({"limit": limit}), "class_names": list(d.class_names),
                "num_classes": d.num_classes, **extra}

    def extras(d):
        out = {"class_pixels": ((d.num_classes + 1,), "int64")}
        if getattr(d, "image_classes", False):
            out["image_class"] = ((), "int32")
        return out

    return build_store(
        ds, split=split, limit=limit, path=path, kind="masks", maps="masks", dtype="uint8",
        extras=extras, attrs=attrs,
        check=check, fn=mask_map, hint=build_command(name, split, limit), workers=workers,
        scheduler=scheduler, overwrite=overwrite, shard_size=shard_size, progress=progress,
        desc=f"masks {name}/{split}", root=data_root)


def locate_mask_store(dataset: str, split: str, *, cache_dir: str | Path | None = None
                      ) -> ShardedStore:
    """The complete mask store of ``dataset``/``split``, open for reading (its path is
    ``.path``); :class:`StoreError` naming the ``qgnet-prep masks`` command when it is
    missing, incomplete or damaged."""
    path = mask_store_path(dataset, split, cache_dir=cache_dir)
    return ShardedStore.open_complete(path, "masks",
                                      build_command(dataset, split, cache_dir=cache_dir),
                                      what="mask store")


def class_image_counts(store: ShardedStore, *, min_pixels: int = MIN_CLASS_PIXELS) -> np.ndarray:
    """(C+1,) number of images with at least ``min_pixels`` pixels of each class 0..C."""
    return (store.extra("class_pixels") >= min_pixels).sum(axis=0)
