"""The cross-domain benchmark of PATNet (Lei et al., ECCV 2022), laid out as PATNet reads it.

Three target domains besides FSS-1000 (:mod:`pipeline.datasets.fss1000`); each has one split,
``test``, and every image one class (:class:`~pipeline.datasets.imageclass.ImageClassDataset`:
object masks thresholded at 128, images without EXIF orientation). Ids are
``<class folder>/<stem>`` (Deepglobe, ISIC) or the mask stem (Chest X-ray), listed in
PATNet's order (classes in order, files by name). Layouts (``root`` is the dataset folder or
the ``datapath`` holding it)::

    Deepglobe/{1..6}/test/origin/NAME.jpg          408 x 408 tiles of the DeepGlobe land
    Deepglobe/{1..6}/test/groundtruth/NAME.png     cover images; the mask of class folder k
    ISIC/ISIC2018_Task1-2_Training_Input/{1,2,3}/ISIC_NNNNNNN.jpg    (or flat, with
    ISIC/ISIC2018_Task1_Training_GroundTruth/ISIC_NNNNNNN_segmentation.png  class_id.csv)
    LungSegmentation/CXR_png/NAME.png
    LungSegmentation/masks/NAME_mask.png

Quirks reproduced from PATNet's ``data/*.py`` (docs/data.md has the table):

* Deepglobe class folders 1..6 come from PATNet's ``data/preprocess.py``, whose colour list
  is compared with ``cv2.imread`` pixels, i.e. in BGR order: folder 1 is agriculture, 2
  urban, 3 rangeland, 4 forest, 5 water, 6 barren land. An image tile may sit in several
  folders, each time with the mask of that folder's class: it is a separate id per folder.
* ISIC: PATNet reads class folders ``1``, ``2``, ``3`` that the user makes from its
  ``data/isic/class_id.csv`` without saying which class is which; we read the folders and
  name them from a ``class_id.csv`` in the ISIC folder when there is one. Without folders,
  the flat download plus ``class_id.csv`` is read directly (classes in the csv's order of
  first appearance: nevus, melanoma, seborrheic_keratosis).
* Chest X-ray: PATNet lists ``masks/*.png`` and finds the image by cutting 9 characters
  (``_mask.png``) off the mask name. The 138 Montgomery masks of the Kaggle release
  (``MCUCXR_*.png``) have no ``_mask`` suffix, so PATNet's reader crashes on them (its issue
  9); its users delete them. We list only ``*_mask.png`` masks (the 566 Shenzhen ones) and
  log how many were left out.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from pipeline.datasets.imageclass import ImageClassDataset, find_folder, reference_image_files

log = logging.getLogger(__name__)

# Deepglobe folder k -> class, from PATNet data/preprocess.py's labelset applied to BGR pixels.
DEEPGLOBE_CLASSES = ("agriculture_land", "urban_land", "rangeland", "forest_land", "water",
                     "barren_land")
ISIC_CLASSES = ("nevus", "melanoma", "seborrheic_keratosis")  # class_id.csv, first appearance
ISIC_IMAGES = "ISIC2018_Task1-2_Training_Input"
ISIC_MASKS = "ISIC2018_Task1_Training_GroundTruth"


class DeepglobeDataset(ImageClassDataset):
    """PATNet's Deepglobe (``open_dataset("deepglobe", root)``), see the module docstring."""

    name = "deepglobe"
    splits = ("test",)
    class_names = DEEPGLOBE_CLASSES
    where = ("PATNet's preprocessed Deepglobe (the 'Preprocessed Data' link in "
             "slei109/PATNet README.md), or the Kaggle release "
             "(balraj98/deepglobe-land-cover-classification-dataset) cut and sorted with "
             "PATNet's data/preprocess.py")
    expected = ("expected class folders 1..6, each with test/origin/NAME.jpg and "
                "test/groundtruth/NAME.png, in ROOT or ROOT/Deepglobe")

    def __init__(self, root):
        super().__init__(root)  # refuses a missing folder
        base = find_folder(self.root, ("Deepglobe",),
                           lambda d: any((d / str(k) / "test" / "origin").is_dir()
                                         for k in range(1, 7)))
        if base is None:
            raise self._error("no class folder k/test/origin/")
        ids = []
        for k in range(1, 7):
            origin = base / str(k) / "test" / "origin"
            files = reference_image_files(origin, "jpg")
            if not files:
                raise self._error(f"class folder {origin} holds no .jpg image")
            gt = base / str(k) / "test" / "groundtruth"
            for img in files:
                stem = img.name.split(".")[0]
                self._entries[f"{k}/{stem}"] = (img, gt / f"{stem}.png", k)
                ids.append(f"{k}/{stem}")
        self._split_ids = {"test": ids}


def _read_class_csv(path: Path) -> dict[str, str]:
    """``class_id.csv`` (PATNet ``data/isic/class_id.csv``: ``ID,Class``) as id -> class."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0][:2]] != ["ID", "Class"]:
        raise ValueError(f"{path}: expected a header 'ID,Class' (PATNet's data/isic/class_id.csv)")
    return {r[0].strip(): r[1].strip() for r in rows[1:] if len(r) >= 2 and r[0].strip()}


class IsicDataset(ImageClassDataset):
    """PATNet's ISIC 2018 task 1 (``open_dataset("isic", root)``), see the module docstring."""

    name = "isic"
    splits = ("test",)
    where = ("https://challenge.isic-archive.com/data/#2018 (Task 1 training input and "
             "ground truth), with slei109/PATNet data/isic/class_id.csv")
    expected = (f"expected {ISIC_IMAGES}/{{1,2,3}}/ISIC_N.jpg (or {ISIC_IMAGES}/ISIC_N.jpg "
                f"and class_id.csv) and {ISIC_MASKS}/ISIC_N_segmentation.png, in ROOT or "
                f"ROOT/ISIC")

    def __init__(self, root):
        super().__init__(root)  # refuses a missing folder
        base = find_folder(self.root, ("ISIC",), lambda d: (d / ISIC_IMAGES).is_dir())
        if base is None:
            raise self._error(f"no {ISIC_IMAGES}/ folder")
        images, masks = base / ISIC_IMAGES, base / ISIC_MASKS
        if not masks.is_dir():
            raise self._error(f"no {ISIC_MASKS}/ folder")
        csv_path = next((p for p in (base / "class_id.csv", images / "class_id.csv")
                         if p.is_file()), None)
        try:
            table = _read_class_csv(csv_path) if csv_path else None
        except ValueError as exc:
            raise self._error(str(exc)) from None
        folders = [images / str(k) for k in (1, 2, 3)]
        if any(f.is_dir() for f in folders):  # PATNet's layout
            groups = []
            for f in folders:
                files = reference_image_files(f, "jpg")
                if not files:
                    raise self._error(f"class folder {f} is missing or holds no .jpg image")
                groups.append(files)
            self.class_names = tuple(self._folder_name(k, g, table, csv_path)
                                     for k, g in enumerate(groups, start=1))
        elif table is not None:  # the flat download plus class_id.csv
            by_class: dict[str, list[Path]] = {n: [] for n in ISIC_CLASSES}
            unlisted = 0
            for img in reference_image_files(images, "jpg"):
                cls = table.get(img.name.split(".")[0])
                if cls in by_class:
                    by_class[cls].append(img)
                else:
                    unlisted += 1
            if unlisted:
                log.info("%s: %d image(s) not in %s left out", images, unlisted, csv_path)
            groups = [by_class[n] for n in ISIC_CLASSES]
            empty = [n for n, g in zip(ISIC_CLASSES, groups, strict=True) if not g]
            if empty:
                raise self._error(f"no image of class {', '.join(empty)} in {images} per "
                                  f"{csv_path}")
            self.class_names = ISIC_CLASSES
        else:
            raise self._error(f"{images} has no class folders 1/, 2/, 3/ and there is no "
                              f"class_id.csv to sort its images by")
        ids = []
        for k, files in enumerate(groups, start=1):
            for img in files:
                stem = img.name.split(".")[0]
                self._entries[f"{k}/{stem}"] = (img, masks / f"{stem}_segmentation.png", k)
                ids.append(f"{k}/{stem}")
        self._split_ids = {"test": ids}

    @staticmethod
    def _folder_name(k: int, files: list[Path], table, csv_path) -> str:
        """A class folder's name: the class_id.csv class of its images, else its number."""
        if table is None:
            return str(k)
        found = {table.get(p.name.split(".")[0]) for p in files}
        found.discard(None)
        if len(found) == 1:
            return found.pop()
        log.warning("ISIC class folder %d holds images of %s per %s; named %d", k,
                    sorted(found) or "no listed class", csv_path, k)
        return str(k)


class ChestDataset(ImageClassDataset):
    """PATNet's Chest X-ray lung masks (``open_dataset("chest", root)``), see the module
    docstring."""

    name = "chest"
    splits = ("test",)
    class_names = ("lung",)
    where = "https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels"
    expected = ("expected CXR_png/NAME.png and masks/NAME_mask.png, in ROOT, "
                "ROOT/LungSegmentation or ROOT/Lung Segmentation")

    def __init__(self, root):
        super().__init__(root)  # refuses a missing folder
        base = find_folder(self.root, ("LungSegmentation", "Lung Segmentation"),
                           lambda d: (d / "masks").is_dir())
        if base is None:
            raise self._error("no masks/ folder")
        if not (base / "CXR_png").is_dir():
            raise self._error(f"no CXR_png/ folder beside {base / 'masks'}")
        listed = reference_image_files(base / "masks", "png")
        kept = [m for m in listed if m.name.endswith("_mask.png")]
        if len(kept) < len(listed):
            log.info("%s: %d mask(s) without the _mask suffix (Montgomery MCUCXR_*) left out, "
                     "as PATNet's users do (its reader cannot pair them)", base / "masks",
                     len(listed) - len(kept))
        if not kept:
            raise self._error(f"{base / 'masks'} holds no NAME_mask.png file")
        ids = []
        for m in kept:
            stem = m.name[: -len("_mask.png")]
            self._entries[stem] = (base / "CXR_png" / f"{stem}.png", m, 1)
            ids.append(stem)
        self._split_ids = {"test": ids}
