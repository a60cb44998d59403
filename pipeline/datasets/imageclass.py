"""Readers where every image shows one class: FSS-1000 and the cross-domain benchmarks.

These datasets come as class folders (or a per-image class list) plus one object mask per
image, and their few-shot protocols (HSNet ``data/fss.py``, PATNet ``data/{deepglobe,isic,
lung}.py``) read them the same way, which this base class implements once:

* ``image_class(id)`` -> the image's class 1..C (its folder);
* ``load_mask(id)`` -> the *object* mask, ``H x W`` uint8 0 / 1: the file converted to grey
  and thresholded at 128 (a 0 / 1 file is taken as it is; see
  :func:`pipeline.datasets._image.load_binary_mask`). FSS-1000 has 1,000 classes, more than
  a uint8 class mask holds, so the class is kept beside the mask, not in it; the mask store
  records it (``image_class``) and the few-shot loader binarises with it;
* images are read as the references read them, without the EXIF orientation
  (``Image.open(p).convert("RGB")``);
* a mask whose size differs from its image's is resized to it (nearest neighbour): the
  references resize image and mask to 400 x 400 independently, which tolerates it;
* an image with a side above :data:`MAX_SIDE` (4,096 px, ``pipeline.store.MAX_MAP_SIDE``) is
  scaled down to fit (image bilinear, mask nearest), aspect kept: ISIC 2018 holds photos up
  to 6,748 px wide, which the cached stores cannot hold, and the protocols score at 400 x 400.

Subclasses fill ``self._entries`` (id -> (image path, mask path, class)) and
``self._split_ids`` (split -> ids in the reference's order) in ``__init__``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.datasets import _image
from pipeline.datasets.base import Dataset
from pipeline.errors import DatasetError

log = logging.getLogger(__name__)

#: Longest image side kept as it is (equal to ``pipeline.store.MAX_MAP_SIDE``).
MAX_SIDE = 4096


def reference_image_files(folder: Path, ext: str) -> list[Path]:
    """The files of ``folder`` the references list, in their order.

    HSNet and PATNet take ``sorted(glob(folder/*))`` and keep a file when the text after its
    first dot equals ``ext`` (``basename.split('.')[1] == 'jpg'``): ``a.b.jpg`` and
    ``x.JPG`` are not listed. The same rule here, sorted by file name (one folder, so the
    order of the full paths).
    """
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        parts = p.name.split(".")
        if len(parts) > 1 and parts[1] == ext and p.is_file():
            out.append(p)
    return sorted(out, key=lambda p: p.name)


def find_folder(root: Path, names: tuple[str, ...], test) -> Path | None:
    """The first of ``root``, ``root/<name>`` ... for which ``test(path)`` holds."""
    for cand in (root, *(root / n for n in names)):
        if cand.is_dir() and test(cand):
            return cand
    return None


class ImageClassDataset(Dataset):
    """Base of the one-class-per-image readers (see the module docstring)."""

    #: Tells the mask stage to store the object mask and ``image_class`` (docs/contracts.md).
    image_classes = True
    max_side: int | None = MAX_SIDE
    where: str = ""
    expected: str = ""

    def __init__(self, root):
        self.root = Path(root)
        self._entries: dict[str, tuple[Path, Path, int]] = {}
        self._split_ids: dict[str, list[str]] = {}
        if not self.root.is_dir():
            raise self._error("folder does not exist")

    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"{self.name} dataset at {self.root}: {what}; {self.expected}. "
                            f"Get it from {self.where} (docs/data.md)")

    # -- the Dataset interface --------------------------------------------------------
    def ids(self, split: str) -> list[str]:
        """Ids in the reference's order: class by class, files by name within a class."""
        self.check_split(split)
        return list(self._split_ids[split])

    def _entry(self, image_id: str) -> tuple[Path, Path, int]:
        try:
            return self._entries[image_id]
        except KeyError:
            raise KeyError(f"no image {image_id!r} in the {self.name} dataset at "
                           f"{self.root}") from None

    def image_path(self, image_id: str) -> Path:
        return self._entry(image_id)[0]

    def mask_path(self, image_id: str) -> Path:
        return self._entry(image_id)[1]

    def image_class(self, image_id: str) -> int:
        """The class (1..C) of the image: the folder it was listed from."""
        return self._entry(image_id)[2]

    def _stored_size(self, image_id: str) -> tuple[int, int]:
        return _image.image_size(self.image_path(image_id), exif=False)

    def image_size(self, image_id: str) -> tuple[int, int]:
        return _image.fit_within(self._stored_size(image_id), self.max_side)

    def load_image(self, image_id: str) -> np.ndarray:
        img = _image.load_rgb(self.image_path(image_id), exif=False)
        return _image.resize_rgb(img, _image.fit_within(img.shape[:2], self.max_side))

    def load_mask(self, image_id: str) -> np.ndarray:
        """The object mask (0 / 1) at the size :meth:`load_image` returns."""
        path = self.mask_path(image_id)
        mask = _image.load_binary_mask(
            path, missing=f"missing mask {path} for image {self.image_path(image_id)}")
        stored = self._stored_size(image_id)
        mask = _image.resize_nearest(mask, stored)  # references resize both to 400 x 400
        return _image.resize_nearest(mask, _image.fit_within(stored, self.max_side))
