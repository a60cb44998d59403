"""FSS-1000 (Li et al., CVPR 2020) in its native layout, with HSNet's class split.

Layout (``root`` is the folder holding the class folders; a parent holding ``FSS-1000/``
(HSNet's and PATNet's ``datapath``) or ``fewshot_data/`` (the official archive) is found
too)::

    FSS-1000/abe's_flyingfish/1.jpg  1.png  2.jpg  2.png ... 10.jpg 10.png
    FSS-1000/accordion/...                     (1,000 class folders, 224 x 224 images)

``N.png`` is the object mask of ``N.jpg``: 0 / 255 (grey or RGB), thresholded at 128 as
HSNet's ``read_mask`` does; a 0 / 1 mask is read as it is. Class names are folder names;
some hold an apostrophe, and a folder written with spaces where the split list has
underscores (``thor's hammer``) is found too.

Splits (:mod:`pipeline.datasets.fss1000_split`, HSNet's ``data/splits/fss/*.txt``):
``train`` (HSNet ``trn``, 520 classes), ``val`` (240) and ``test`` (240, the split FSS-1000
results are reported on). Class ids: train classes 1..520, val 521..760, test 761..1000,
each block in sorted name order (HSNet's ``class_id`` + 1). Ids are ``<class>/<stem>``,
listed as HSNet lists its images: classes in sorted order, then files by name
(``1, 10, 2, 3, ..., 9``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.datasets import fss1000_split
from pipeline.datasets.imageclass import ImageClassDataset, find_folder, reference_image_files

log = logging.getLogger(__name__)

WHERE = ("https://github.com/HKUSTCV/FSS-1000 (fewshot_data.zip; PATNet's README links the "
         "same archive)")
SPLITS = {"train": fss1000_split.TRAIN, "val": fss1000_split.VAL, "test": fss1000_split.TEST}
CLASS_NAMES = fss1000_split.TRAIN + fss1000_split.VAL + fss1000_split.TEST
OFFSETS = {"train": 0, "val": len(fss1000_split.TRAIN),
           "test": len(fss1000_split.TRAIN) + len(fss1000_split.VAL)}


class Fss1000Dataset(ImageClassDataset):
    """Reader for FSS-1000 (``open_dataset("fss1000", root)``).

    Construction lists the class folders only; the images of a split are listed on first
    use of the split (:meth:`ids`), which refuses a split whose class folders are missing.

    Raises
    ------
    DatasetError
        No class folder of the split lists under ``root`` (the message says what is
        expected and where to get it), or (from :meth:`ids`) a split with missing or empty
        class folders.
    """

    name = "fss1000"
    splits = ("train", "val", "test")
    class_names = CLASS_NAMES
    where = WHERE
    expected = ("expected one folder per class (abe's_flyingfish/, accordion/, ...) holding "
                "N.jpg images and N.png masks, in ROOT, ROOT/FSS-1000 or ROOT/fewshot_data")

    def __init__(self, root):
        super().__init__(root)  # refuses a missing folder
        known = set(CLASS_NAMES)
        self.data_dir = find_folder(
            self.root, ("FSS-1000", "fewshot_data", "fewshot_data/fewshot_data"),
            lambda d: any(p.name in known or p.name.replace(" ", "_") in known
                          for p in d.iterdir() if p.is_dir()))
        if self.data_dir is None:
            raise self._error("no folder named after an FSS-1000 class")
        self._folders = {}
        for p in self.data_dir.iterdir():
            if p.is_dir():
                key = p.name if p.name in known else p.name.replace(" ", "_")
                if key in known and (key not in self._folders or p.name == key):
                    self._folders[key] = p
        self._listed: set[str] = set()

    def _list_split(self, split: str) -> None:
        if split in self._listed:
            return
        names = SPLITS[split]
        missing = [n for n in names if n not in self._folders]
        if missing:
            raise self._error(f"{len(missing)} of the {len(names)} {split} class folders are "
                              f"missing (first: {', '.join(missing[:3])})")
        ids: list[str] = []
        for k, name in enumerate(names):
            cls = OFFSETS[split] + k + 1
            folder = self._folders[name]
            files = reference_image_files(folder, "jpg")
            if not files:
                raise self._error(f"class folder {folder} holds no .jpg image")
            for img in files:
                stem = img.name.split(".")[0]
                image_id = f"{name}/{stem}"
                self._entries[image_id] = (img, folder / f"{stem}.png", cls)
                ids.append(image_id)
        self._split_ids[split] = ids
        self._listed.add(split)

    def ids(self, split: str) -> list[str]:
        self.check_split(split)
        self._list_split(split)
        return super().ids(split)

    def _entry(self, image_id: str) -> tuple[Path, Path, int]:
        if image_id not in self._entries:  # a reader opened for scoring: list on demand
            name = image_id.rsplit("/", 1)[0]
            for split, names in SPLITS.items():
                if name in names:
                    self._list_split(split)
                    break
        return super()._entry(image_id)
