"""A plain folder of images and index masks: the layout for your own data and the demo.

::

    ROOT/
      classes.txt          one class name per line, for ids 1..C (background is not listed)
      images/NAME.jpg      or NAME.jpeg / NAME.png (any case)
      masks/NAME.png       8-bit grayscale or palette PNG: 0 background, 1..C, 255 ignore
      train.txt, val.txt   optional; one NAME per line

Splits: ``train`` and ``val`` from the two lists when both exist; otherwise a fixed rule over
the sorted image names: index ``i`` goes to ``val`` when ``i % 5 == 4`` (every fifth image),
to ``train`` otherwise. ``all`` is every image. Ids are the file stems, sorted.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.datasets import _image
from pipeline.datasets.base import Dataset
from pipeline.errors import DatasetError, ImageReadError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
VAL_EVERY = 5  # without lists: sorted index % 5 == 4 -> val

_EXPECTED = ("expected images/NAME.{jpg,jpeg,png}, masks/NAME.png (0 background, 1..C, "
             "255 ignore) and classes.txt (one name per line for ids 1..C); optional "
             "train.txt and val.txt (one NAME per line). See docs/data.md")


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file (``#`` starts a comment line)."""
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


class FolderDataset(Dataset):
    """Reader for the folder layout above (``open_dataset("folder", root)``).

    Parameters
    ----------
    root : path
        The folder holding ``images/``, ``masks/`` and ``classes.txt``.

    Raises
    ------
    DatasetError
        The layout is incomplete (empty folder, no images, no ``classes.txt``, a name listed
        in ``train.txt``/``val.txt`` without an image, two images with the same name).
    """

    name = "folder"
    splits = ("train", "val", "all")

    def __init__(self, root):
        self.root = Path(root)
        self._images: dict[str, Path] = self._scan()
        self.class_names = self._read_classes()
        self._split_ids = self._make_splits()

    # -- construction -----------------------------------------------------------------
    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"{self.name} dataset at {self.root}: {what}; {_EXPECTED}")

    def _scan(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise self._error("folder does not exist")
        img_dir = self.root / "images"
        if not img_dir.is_dir():
            raise self._error("no images/ folder")
        images: dict[str, Path] = {}
        for p in sorted(img_dir.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
                continue
            if p.stem in images:
                raise self._error(f"two images named {p.stem}: {images[p.stem].name} and "
                                  f"{p.name}; keep one")
            images[p.stem] = p
        if not images:
            raise self._error("images/ holds no .jpg/.jpeg/.png files")
        if not (self.root / "masks").is_dir():
            raise self._error("no masks/ folder")
        return images

    def _read_classes(self) -> tuple[str, ...]:
        path = self.root / "classes.txt"
        if not path.is_file():
            raise self._error("no classes.txt")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if names and names[0] == "_background_":  # labelme writes the background first
            log.info("%s: dropping the leading _background_ line (class ids start at 1)", path)
            names = names[1:]
        if not names:
            raise self._error("classes.txt lists no class")
        if len(names) > 254:
            raise self._error(f"classes.txt lists {len(names)} classes; at most 254 fit in "
                              f"uint8 masks with 255 as ignore")
        return tuple(names)

    def _make_splits(self) -> dict[str, list[str]]:
        names = sorted(self._images)
        lists = {s: self.root / f"{s}.txt" for s in ("train", "val")}
        present = [s for s, p in lists.items() if p.is_file()]
        if len(present) == 1:
            missing = ({"train", "val"} - set(present)).pop()
            raise self._error(f"{present[0]}.txt exists but {missing}.txt does not; give both "
                              f"lists or neither")
        if present:
            out = {}
            for s, p in lists.items():
                ids = read_list(p)
                unknown = [i for i in ids if i not in self._images]
                if unknown:
                    raise self._error(f"{p.name} names {len(unknown)} image(s) not in images/ "
                                      f"(first: {', '.join(unknown[:3])})")
                out[s] = sorted(set(ids))
        else:
            out = {"train": [n for i, n in enumerate(names) if i % VAL_EVERY != VAL_EVERY - 1],
                   "val": [n for i, n in enumerate(names) if i % VAL_EVERY == VAL_EVERY - 1]}
        out["all"] = names
        return out

    # -- the Dataset interface --------------------------------------------------------
    def ids(self, split: str) -> list[str]:
        self.check_split(split)
        return list(self._split_ids[split])

    def image_path(self, image_id: str) -> Path:
        try:
            return self._images[image_id]
        except KeyError:
            raise KeyError(f"no image {image_id!r} in {self.root / 'images'}") from None

    def mask_path(self, image_id: str) -> Path:
        self.image_path(image_id)  # unknown id -> KeyError
        return self.root / "masks" / f"{image_id}.png"

    def load_mask(self, image_id: str) -> np.ndarray:
        path = self.mask_path(image_id)
        if not path.is_file():
            raise ImageReadError(f"missing mask masks/{image_id}.png in {self.root} for image "
                                 f"{self.image_path(image_id).name}")
        mask = _image.load_index_mask(path)
        return _image.check_mask(mask, self.num_classes, path, self.image_size(image_id))
