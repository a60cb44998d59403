"""PASCAL VOC 2012 segmentation, optionally with the SBD / SegmentationClassAug masks.

Layout (``root`` is the ``VOC2012`` folder; ``root/VOC2012`` and ``root/VOCdevkit/VOC2012``
are found too)::

    VOC2012/JPEGImages/NAME.jpg
    VOC2012/SegmentationClass/NAME.png          palette PNG, read as indices (255 = border)
    VOC2012/ImageSets/Segmentation/{train,val}.txt
    VOC2012/SegmentationClassAug/NAME.png       optional (the 10,582 "aug" masks)
    VOC2012/SBD/ or VOC2012/benchmark_RELEASE/dataset/   optional SBD release:
        cls/NAME.mat (GTcls.Segmentation), train.txt, val.txt, train_noval.txt

Mask of an image: ``SegmentationClass`` if present, else ``SegmentationClassAug``, else the
SBD ``.mat``. Splits (PFENet / HSNet):

* ``val``   = VOC val (1,449);
* ``train`` = (VOC train + SBD train_noval) - VOC val (5,953 with the full data);
* ``aug``   = (VOC train + SBD train + SBD val) - VOC val (10,582).

Without SBD lists ``train`` falls back to VOC train (a warning is logged once) and ``aug`` is
(VOC train + the SegmentationClassAug names) - VOC val, or an error without either. A folder
without ``ImageSets/Segmentation`` (e.g. labelme's VOC export) has one split, ``all``: every
image with a ``SegmentationClass`` mask.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.datasets import _image
from pipeline.datasets.base import Dataset
from pipeline.datasets.folder import read_list
from pipeline.errors import DatasetError, ImageReadError

log = logging.getLogger(__name__)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

WHERE_VOC = ("VOC2012 trainval: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ "
             "(VOCtrainval_11-May-2012.tar)")
WHERE_SBD = ("SBD: the Berkeley Semantic Boundaries Dataset release benchmark.tgz "
             "(http://home.bharathh.info/pubs/codes/SBD/download.html), unpacked so that "
             "benchmark_RELEASE/dataset/ sits in the VOC2012 folder, plus its train_noval.txt")
_EXPECTED = ("expected JPEGImages/, SegmentationClass/ (palette PNGs) and "
             "ImageSets/Segmentation/{train,val}.txt, optionally SegmentationClassAug/ and "
             "SBD/ or benchmark_RELEASE/dataset/ (cls/*.mat, train.txt, val.txt, "
             "train_noval.txt)")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def _stems(folder: Path, suffix: str) -> frozenset[str]:
    """Names (without ``suffix``) of the files in ``folder`` ending with ``suffix``."""
    if not folder.is_dir():
        return frozenset()
    with os.scandir(folder) as it:
        return frozenset(e.name[: -len(suffix)] for e in it
                         if e.name.endswith(suffix) and e.is_file())


class PascalDataset(Dataset):
    """Reader for PASCAL VOC 2012 (+ SBD) segmentation (``open_dataset("pascal", root)``).

    Class names are the 20 VOC classes; a ``class_names.txt`` in the folder (labelme's
    export: ``_background_`` first, then one class per line) replaces them.

    Raises
    ------
    DatasetError
        ``root`` lacks ``JPEGImages/`` or any mask source, or lacks one of the VOC lists.
    """

    name = "pascal"

    def __init__(self, root):
        self.root = Path(root)
        self.voc_dir = self._find_voc_dir()
        voc = self.voc_dir
        self._jpeg_dir = voc / "JPEGImages"
        self._cls_dir = voc / "SegmentationClass"
        self._aug_dir = voc / "SegmentationClassAug"
        self._sbd_dir = next((d for d in (voc / "SBD", voc / "benchmark_RELEASE" / "dataset",
                                          self.root / "SBD",
                                          self.root / "benchmark_RELEASE" / "dataset")
                              if (d / "cls").is_dir()), None)
        self._voc_masks = _stems(self._cls_dir, ".png")
        self._aug_masks = _stems(self._aug_dir, ".png")
        self._sbd_masks = _stems(self._sbd_dir / "cls", ".mat") if self._sbd_dir else frozenset()
        if not (self._voc_masks or self._aug_masks or self._sbd_masks):
            raise self._error("no masks found (SegmentationClass/, SegmentationClassAug/ and "
                              "SBD cls/ are all empty or absent)")
        self.class_names = self._read_class_names()
        self._split_ids = self._make_splits()
        self.splits = tuple(self._split_ids)

    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"pascal dataset at {self.root}: {what}; {_EXPECTED}. "
                            f"Get {WHERE_VOC}; optional {WHERE_SBD}")

    def _find_voc_dir(self) -> Path:
        for cand in (self.root, self.root / "VOC2012", self.root / "VOCdevkit" / "VOC2012"):
            if (cand / "JPEGImages").is_dir():
                return cand
        if not self.root.is_dir():
            raise self._error("folder does not exist")
        raise self._error("no JPEGImages/ folder")

    def _read_class_names(self) -> tuple[str, ...]:
        path = self.voc_dir / "class_names.txt"
        if not path.is_file():
            return VOC_CLASSES
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if names and names[0] in ("_background_", "background", "__background__"):
            names = names[1:]
        if not names:
            raise self._error(f"{path.name} lists no class")
        return tuple(names)

    def _sbd_list(self, name: str) -> list[str] | None:
        if self._sbd_dir is None or not (self._sbd_dir / name).is_file():
            return None
        return read_list(self._sbd_dir / name)

    def _make_splits(self) -> dict[str, list[str] | None]:
        sets = self.voc_dir / "ImageSets" / "Segmentation"
        if not sets.is_dir():
            log.info("%s has no ImageSets/Segmentation: one split 'all' with every image "
                     "that has a SegmentationClass mask", self.voc_dir)
            return {"all": sorted(self._voc_masks)}
        lists = {}
        for s in ("train", "val"):
            if not (sets / f"{s}.txt").is_file():
                raise self._error(f"missing ImageSets/Segmentation/{s}.txt")
            lists[s] = set(read_list(sets / f"{s}.txt"))
        voc_val = lists["val"]
        sbd_train, sbd_val = self._sbd_list("train.txt"), self._sbd_list("val.txt")
        noval = self._sbd_list("train_noval.txt")
        if noval is None and sbd_train is not None:
            log.info("%s has no train_noval.txt; using SBD train.txt minus VOC val instead",
                     self._sbd_dir)
            noval = sbd_train
        if noval is not None:
            train = (lists["train"] | set(noval)) - voc_val
        else:
            _warn_once(f"pascal at {self.root}: no SBD lists (SBD/ or benchmark_RELEASE/"
                       f"dataset/ with train_noval.txt); split 'train' is VOC train only "
                       f"({len(lists['train'] - voc_val)} images, not PFENet's 5,953)")
            train = lists["train"] - voc_val
        if sbd_train is not None or sbd_val is not None:
            aug = (lists["train"] | set(sbd_train or ()) | set(sbd_val or ())) - voc_val
        elif self._aug_masks:
            aug = (lists["train"] | self._aug_masks) - voc_val
        else:
            aug = None  # ids("aug") explains what is missing
        return {"train": sorted(train), "val": sorted(voc_val),
                "aug": sorted(aug) if aug is not None else None}

    # -- the Dataset interface --------------------------------------------------------
    def ids(self, split: str) -> list[str]:
        self.check_split(split)
        out = self._split_ids[split]
        if out is None:
            raise DatasetError(f"pascal dataset at {self.root}: split 'aug' needs the SBD "
                               f"masks and lists or SegmentationClassAug/; neither is there. "
                               f"Get {WHERE_SBD}")
        return list(out)

    def image_path(self, image_id: str) -> Path:
        path = self._jpeg_dir / f"{image_id}.jpg"
        if not path.exists() and self._sbd_dir is not None:
            alt = self._sbd_dir / "img" / f"{image_id}.jpg"
            if alt.exists():
                return alt
        return path

    def mask_path(self, image_id: str) -> Path:
        """The mask file used for ``image_id`` (VOC, else Aug, else SBD .mat)."""
        if image_id in self._voc_masks:
            return self._cls_dir / f"{image_id}.png"
        if image_id in self._aug_masks:
            return self._aug_dir / f"{image_id}.png"
        if image_id in self._sbd_masks:
            return self._sbd_dir / "cls" / f"{image_id}.mat"
        raise ImageReadError(f"missing mask for {image_id}: not in SegmentationClass/, "
                             f"SegmentationClassAug/ or SBD cls/ under {self.voc_dir}")

    def load_mask(self, image_id: str) -> np.ndarray:
        path = self.mask_path(image_id)
        mask = load_sbd_mat(path) if path.suffix == ".mat" else _image.load_index_mask(path)
        return _image.check_mask(mask, self.num_classes, path, self.image_size(image_id))


def load_sbd_mat(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file as ``H x W`` uint8 (0..20)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError:
        raise ImageReadError(f"missing mask {path}") from None
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ImageReadError(f"cannot read SBD mask {path} (expected a GTcls struct with a "
                             f"Segmentation field): {exc!r}") from exc
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise ImageReadError(f"SBD mask {path} is not a 2-D array of class ids "
                             f"(shape {seg.shape})")
    return seg.astype(np.uint8)
