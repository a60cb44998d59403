"""The one interface every dataset reader implements.

A reader maps image ids to RGB images and class masks:

* ``load_image(id)`` -> ``H x W x 3`` uint8 RGB (EXIF orientation applied; grayscale, CMYK,
  palette and RGBA converted);
* ``load_mask(id)``  -> ``H x W`` uint8: 0 = background, 1..C = classes, 255 = ignore;
* ``class_names[c - 1]`` is the name of class ``c`` (1..C).

Readers are cheap to construct (they validate the root and read small index files only),
picklable (Dask processes and DataLoader workers receive copies; heavy caches must be
dropped in ``__getstate__`` and rebuilt lazily), and never write into the dataset root.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from pipeline.datasets import _image
from pipeline.errors import ConfigError


class Dataset(ABC):
    """Base class of the readers in :data:`pipeline.datasets.DATASETS`.

    Attributes
    ----------
    name : str
        Registry name (``"coco"``, ``"pascal"``, ``"fss1000"``, ...; a user-named dataset's
        own name): the key of its cache folder.
    root : Path
        The dataset root it was opened on.
    class_names : tuple of str
        Names of classes 1..C (index ``c - 1``); background is not listed.
    splits : tuple of str
        Split names accepted by :meth:`ids` (e.g. ``("train", "val")``).
    """

    name: str = ""
    root: Path
    class_names: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "val")

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes."""
        return len(self.class_names)

    #: True for readers of one class per image (:mod:`pipeline.datasets.imageclass`): their
    #: ``load_mask`` gives the object (0 / 1) and ``image_class(id)`` its class.
    image_classes: bool = False

    @abstractmethod
    def ids(self, split: str) -> list[str]:
        """Image ids of ``split`` in a fixed, documented order (sorted unless stated)."""

    @abstractmethod
    def image_path(self, image_id: str) -> Path:
        """Path of the image file (DataLoader workers stream these)."""

    def image_size(self, image_id: str) -> tuple[int, int]:
        """``(H, W)`` after EXIF orientation, read from the file header (cheap); readers with
        an index (COCO) override it."""
        return _image.image_size(self.image_path(image_id))

    def load_image(self, image_id: str) -> np.ndarray:
        """``H x W x 3`` uint8 RGB. Raises :class:`ImageReadError` when unreadable."""
        return _image.load_rgb(self.image_path(image_id))

    @abstractmethod
    def load_mask(self, image_id: str) -> np.ndarray:
        """``H x W`` uint8 class mask (0 bg, 1..C, 255 ignore). Raises :class:`ImageReadError`."""

    @classmethod
    def default_root(cls, *, cache_dir=None) -> Path:
        """Root used by :func:`~pipeline.datasets.open_dataset` when none is given:
        ``<cache root>/<name>/data`` (the demo reader generates it there)."""
        from pipeline.cache import dataset_cache_dir

        return dataset_cache_dir(cls.name, cache_dir=cache_dir) / "data"

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(f"{self.name} dataset at {self.root} has no split {split!r}; "
                              f"available splits: {', '.join(self.splits)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, classes={self.num_classes})"
