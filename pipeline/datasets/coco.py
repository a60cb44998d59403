"""MS COCO instances (2014 or 2017), and any COCO-style json, rendered as semantic class masks.

Layout of the official release (``--dataset coco``)::

    ROOT/train2014/COCO_train2014_000000000009.jpg ...   or  ROOT/train2017/000000000009.jpg
    ROOT/val2014/COCO_val2014_000000000042.jpg ...           ROOT/val2017/000000000139.jpg
    ROOT/annotations/instances_{train,val}2014.json          instances_{train,val}2017.json

The year is found from what is there (``year=2014`` or ``2017`` forces one; with both, 2014,
the COCO-20i papers' release, unless told). The 80 classes and the COCO-20i folds are the
same for both years. Image ids of either year are resolved whatever year was chosen (2014
ids carry their split in the name; 2017 ids are found in ``train2017/`` or ``val2017/``), so
a reader can score stores made with either.

Any COCO-style instances json (labelme, CVAT, Label Studio exports) opens with
:meth:`CocoDataset.from_json` (one split) or, one json and image folder per split, as the
``coco-json`` reader :class:`CocoJsonDataset` described by a ``dataset.toml``
(:mod:`pipeline.datasets.spec`); its classes are the json's own categories.

Labels: the category ids (1..90 with gaps) map to 1..C by rank in the sorted id list, so in
COCO person = 1 ... toothbrush = 80. A category with id 0 (labelme writes ``_background_``
there) is not a class: it is skipped with a logged note, and a json whose annotations use it
is rejected.

Mask of an image (:meth:`CocoDataset.load_mask`): crowd regions (``iscrowd=1``, usually
uncompressed RLE) are painted 255 first; then the other instances largest visible area
first, so smaller objects stay on top; a non-crowd instance therefore overrides crowd 255
where they overlap. Polygons (one or several per object), uncompressed and compressed RLE
are decoded with pycocotools. Annotations of image ids the json does not list are left out
with a logged warning naming the json.

The json of a split is parsed on first use (the train json is about 450 MB) and dropped when
the reader is pickled; ``image_path`` and ``image_size`` of COCO ids never need it.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.datasets import _image
from pipeline.datasets.base import Dataset
from pipeline.errors import IGNORE, ConfigError, DatasetError, ImageReadError

log = logging.getLogger(__name__)

#: The 80 COCO 2014/2017 categories as (id, name); label = 1-based rank of the id.
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)

YEARS = (2014, 2017)
WHERE = ("COCO: https://cocodataset.org/#download (2014 or 2017 Train images, Val images "
         "and Train/Val annotations), unpacked into ROOT")
_EXPECTED = ("expected train2014/, val2014/ and annotations/instances_{train,val}2014.json, "
             "or the same with 2017 (at least one complete split)")
_SPLIT_OF_STEM = re.compile(r"^COCO_(train|val)(2014)_")
_COCO2017_ID = re.compile(r"^\d{12}$")


@dataclass
class _SplitIndex:
    """What one parsed json keeps: per stem its (coco id, file name, H, W) (H, W None when
    the json omits them), per coco image id its annotations as (category id, iscrowd,
    segmentation, annotation id)."""

    images: dict[str, tuple[int, str, int | None, int | None]]
    anns: dict[int, list[tuple[int, int, object, int]]] = field(default_factory=dict)


def category_labels(categories: list[dict], *, source: str = "") -> tuple[dict[int, int], tuple[str, ...]]:
    """Map category ids to labels 1..C by rank among the sorted non-zero ids.

    Returns ``(id -> label, names)``; category 0 (a background entry) is skipped with a note.
    """
    cats = {}
    for c in categories:
        cid = int(c["id"])
        if cid == 0:
            log.info("%s: category 0 (%r) is a background entry, not a class; skipped",
                     source, c.get("name"))
            continue
        if cid in cats:
            raise DatasetError(f"{source}: category id {cid} appears twice")
        cats[cid] = str(c.get("name", cid))
    ordered = sorted(cats)
    return {cid: i + 1 for i, cid in enumerate(ordered)}, tuple(cats[c] for c in ordered)


def _decode(seg, h: int, w: int) -> np.ndarray | None:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an ``H x W`` bool."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, h, w)
    elif isinstance(seg, dict):  # compressed RLE (counts is a string)
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unknown segmentation type {type(seg).__name__}")
    m = mask_utils.decode(rle)
    if m.shape[:2] != (h, w):
        raise ValueError(f"segmentation is {m.shape[0]}x{m.shape[1]}, image is {h}x{w}")
    return m.astype(bool)


class CocoDataset(Dataset):
    """Reader for COCO instances as semantic masks (``open_dataset("coco", root)``).

    Parameters
    ----------
    root : path
        Folder holding ``train2014/``, ``val2014/`` and ``annotations/`` (or the 2017 ones).
    year : {2014, 2017}, optional
        The release whose splits :meth:`ids` lists; default: the one present (2014 when both
        are).

    Raises
    ------
    DatasetError
        No complete split under ``root`` (the message says what is expected and where to get
        it), or (later, on first use of a split) a json whose categories differ from COCO's.
    ConfigError
        ``year`` is not 2014 or 2017, or that release is not under ``root``.
    """

    name = "coco"

    def __init__(self, root, *, year: int | None = None,
                 _single: tuple[Path, Path, str] | None = None):
        self.root = Path(root)
        self._index: dict[str, _SplitIndex] = {}
        self._missing_checked: set[str] = set()
        self.year = None
        if _single is not None:  # from_json
            json_path, image_dir, split = _single
            self._layout = "json"
            self._sources = {split: (json_path, image_dir)}
            self._keys = {split: split}
            self.splits = (split,)
            data = self._read_json(split)
            self._labels, self.class_names = category_labels(data["categories"],
                                                             source=str(json_path))
            if not self._labels:
                raise DatasetError(f"{json_path}: no categories with a non-zero id")
            self._index[split] = self._build_index(split, data)
            return
        self._layout = "coco"
        if year is not None and int(year) not in YEARS:
            raise ConfigError(f"--year must be 2014 or 2017, got {year}")
        if not self.root.is_dir():
            raise self._error("folder does not exist")
        self._sources = {}  # "val2014" -> (json, image folder), every complete one
        for y in YEARS:
            for s in ("train", "val"):
                j = self.root / "annotations" / f"instances_{s}{y}.json"
                d = self.root / f"{s}{y}"
                if j.is_file() and d.is_dir():
                    self._sources[f"{s}{y}"] = (j, d)
        years = [y for y in YEARS if any(k.endswith(str(y)) for k in self._sources)]
        if not years:
            have = sorted(p.name + ("/" if p.is_dir() else "") for p in self.root.iterdir())[:8]
            raise self._error(f"no complete split (found: {', '.join(have) or 'nothing'})")
        if year is None:
            year = years[0]
            if len(years) > 1:
                log.info("COCO 2014 and 2017 are both under %s; reading 2014 (the COCO-20i "
                         "papers' release); pass --year 2017 for the other", self.root)
        elif int(year) not in years:
            raise ConfigError(f"--year {year}: no complete COCO {year} split under {self.root} "
                              f"(found {', '.join(map(str, years))}); need {{train,val}}{year}/ "
                              f"and annotations/instances_{{train,val}}{year}.json")
        self.year = int(year)
        self._keys = {s: f"{s}{self.year}" for s in ("train", "val")
                      if f"{s}{self.year}" in self._sources}
        self.splits = tuple(self._keys)
        self._labels = {cid: i + 1 for i, (cid, _) in enumerate(COCO_CATEGORIES)}
        self.class_names = tuple(n for _, n in COCO_CATEGORIES)

    @classmethod
    def from_json(cls, json_path, image_dir=None, *, split: str = "val") -> "CocoDataset":
        """Open any COCO-style instances json with its images as a one-split dataset.

        Parameters
        ----------
        json_path : path
            The instances json (``images``, ``annotations``, ``categories``).
        image_dir : path, optional
            Folder the images' ``file_name`` entries are relative to; defaults to the json's
            folder (labelme writes ``JPEGImages/NAME.jpg`` there).
        split : str
            Name of the one split (default ``"val"``).

        Example
        -------
        >>> ds = CocoDataset.from_json("data_dataset_coco/annotations.json")  # doctest: +SKIP
        >>> ds.ids("val")                                                     # doctest: +SKIP
        ['2011_000003', '2011_000006', '2011_000025']
        """
        json_path = Path(json_path)
        if not json_path.is_file():
            raise DatasetError(f"coco json {json_path} does not exist; expected a COCO-style "
                               f"instances json (images, annotations, categories)")
        image_dir = Path(image_dir) if image_dir is not None else json_path.parent
        return cls(json_path.parent, _single=(json_path, image_dir, split))

    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"coco dataset at {self.root}: {what}; {_EXPECTED}. Get {WHERE}")

    # -- json parsing (lazy, per source) ----------------------------------------------
    def _read_json(self, key: str) -> dict:
        path = self._sources[key][0]
        log.info("parsing %s", path)
        try:
            with path.open("rb") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot parse {path}: {exc}; expected a COCO instances json "
                               f"(images, annotations, categories)") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{path} holds a JSON {type(data).__name__}, not an object with "
                               f"images, annotations and categories; not a COCO instances json")
        for name in ("images", "annotations", "categories"):
            if not isinstance(data.get(name), list):
                raise DatasetError(f"{path} has no {name!r} list; not a COCO instances json")
        return data

    def _build_index(self, key: str, data: dict) -> _SplitIndex:
        path = self._sources[key][0]
        images: dict[str, tuple[int, str, int | None, int | None]] = {}
        by_id: dict[int, str] = {}
        for im in data["images"]:
            try:  # a Windows export writes sub\name.jpg
                coco_id, file_name = int(im["id"]), str(im["file_name"]).replace("\\", "/")
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{path}: image entry {str(im)[:80]} lacks an 'id' or "
                                   f"'file_name'") from None
            stem = Path(file_name).stem
            if stem in images:
                raise DatasetError(f"{path}: images {images[stem][1]} and {file_name} have the "
                                   f"same file stem {stem!r}; ids must be unique, rename one")
            if coco_id in by_id:
                raise DatasetError(f"{path}: image id {coco_id} is listed twice "
                                   f"({images[by_id[coco_id]][1]} and {file_name})")
            h, w = im.get("height"), im.get("width")
            images[stem] = (coco_id, file_name, int(h) if h else None, int(w) if w else None)
            by_id[coco_id] = stem
        index = _SplitIndex(images)
        zero, unknown = 0, []
        for a in data["annotations"]:
            cid = int(a["category_id"])
            if cid not in self._labels:
                if cid == 0:
                    zero += 1
                    continue
                raise DatasetError(f"{path}: annotation {a.get('id')} has category id {cid}, "
                                   f"which is not in the categories list")
            image_id = int(a["image_id"])
            if image_id not in by_id:
                unknown.append((a.get("id"), image_id))
                continue
            if "segmentation" not in a:
                raise DatasetError(f"{path}: annotation {a.get('id')} of image {image_id} has "
                                   f"no 'segmentation' (only boxes?); a mask needs polygons or "
                                   f"RLE")
            index.anns.setdefault(image_id, []).append(
                (cid, int(a.get("iscrowd", 0)), a["segmentation"], int(a.get("id", 0))))
        if zero:
            raise DatasetError(f"{path}: {zero} annotation(s) use category id 0 (background); "
                               f"class ids must be non-zero")
        if unknown:
            head = ", ".join(f"annotation {a} -> image {i}" for a, i in unknown[:3])
            log.warning("%s: %d annotation(s) refer to image ids not in its images list "
                        "(%s%s); left out", path, len(unknown), head,
                        " ..." if len(unknown) > 3 else "")
        return index

    def _source_index(self, key: str) -> _SplitIndex:
        if key not in self._index:
            data = self._read_json(key)
            self._check_categories(key, data)
            self._index[key] = self._build_index(key, data)
        return self._index[key]

    def _check_categories(self, key: str, data: dict) -> None:
        if self._labels != category_labels(data["categories"],
                                           source=str(self._sources[key][0]))[0]:
            raise DatasetError(f"{self._sources[key][0]}: categories differ from the 80 COCO "
                               f"categories; open it as a coco-json dataset instead "
                               f"(docs/data.md)")

    def _key_of(self, image_id: str) -> str:
        """The source (``val2014``, ``train2017``, or a split in json mode) holding an id."""
        m = _SPLIT_OF_STEM.match(image_id)
        if m and f"{m.group(1)}{m.group(2)}" in self._sources:
            return f"{m.group(1)}{m.group(2)}"
        if self._layout == "coco" and _COCO2017_ID.match(image_id):
            for s in ("val", "train"):
                src = self._sources.get(f"{s}2017")
                if src and (src[1] / f"{image_id}.jpg").is_file():
                    return f"{s}2017"
        for key in self._keys.values():
            if image_id in self._source_index(key).images:
                return key
        raise KeyError(f"no image {image_id!r} in the {self.name} dataset at {self.root}")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_index"] = {}  # parsed jsons are rebuilt lazily in the receiving process
        return state

    # -- the Dataset interface --------------------------------------------------------
    def check_split(self, split: str) -> None:
        if self._layout == "coco" and split in ("train", "val") and split not in self.splits:
            raise self._error(f"split {split!r} is missing (need {split}{self.year}/ and "
                              f"annotations/instances_{split}{self.year}.json)")
        super().check_split(split)

    def ids(self, split: str) -> list[str]:
        self.check_split(split)
        key = self._keys[split]
        ids = sorted(self._source_index(key).images)
        if self._layout != "coco":
            self._check_files(key)
        return ids

    def _check_files(self, key: str) -> None:
        """A json's images that are not in its image folder: refuse when none is (a wrong
        folder), else warn once naming them (each becomes a failure of the stages)."""
        if key in self._missing_checked:
            return
        json_path, image_dir = self._sources[key]
        images = self._source_index(key).images
        missing = [fn for _, fn, _, _ in images.values() if not (image_dir / fn).is_file()]
        if images and len(missing) == len(images):
            raise DatasetError(f"none of the {len(images)} images listed in {json_path} is in "
                               f"{image_dir} (first expected: {image_dir / missing[0]}); give "
                               f"the folder their file_name entries are relative to")
        if missing:
            log.warning("%d of the %d images listed in %s are missing from %s (first: %s); "
                        "each is reported as a failure", len(missing), len(images), json_path,
                        image_dir, ", ".join(missing[:3]))
        self._missing_checked.add(key)

    def image_path(self, image_id: str) -> Path:
        key = self._key_of(image_id)
        image_dir = self._sources[key][1]
        if self._layout == "coco" and key not in self._index:  # COCO names: no json parse
            return image_dir / f"{image_id}.jpg"
        return image_dir / self._source_index(key).images[image_id][1]

    def image_size(self, image_id: str) -> tuple[int, int]:
        return _image.image_size(self.image_path(image_id))

    def load_image(self, image_id: str) -> np.ndarray:
        return _image.load_rgb(self.image_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray:
        key = self._key_of(image_id)
        index = self._source_index(key)
        coco_id, _, h, w = index.images[image_id]
        if h is None or w is None:  # the json gives no size: the displayed image's
            h, w = _image.image_size(self.image_path(image_id))
        mask = np.zeros((h, w), np.uint8)
        crowd, objects = [], []
        for cid, iscrowd, seg, ann_id in index.anns.get(coco_id, ()):
            try:
                m = _decode(seg, h, w)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise ImageReadError(f"{self._sources[key][0]}: annotation {ann_id} of "
                                     f"{image_id} cannot be decoded: {exc}") from exc
            if m is None:
                continue
            if iscrowd:
                crowd.append(m)
            else:
                objects.append((int(m.sum()), ann_id, self._labels[cid], m))
        for m in crowd:
            mask[m] = IGNORE
        for _, _, label, m in sorted(objects, key=lambda t: (-t[0], t[1])):  # largest first
            mask[m] = label
        return self._orient(mask, image_id)

    def _orient(self, mask: np.ndarray, image_id: str) -> np.ndarray:
        """Bring a mask drawn at the json's size into the orientation ``load_image`` returns.

        Annotations drawn on the displayed (EXIF-rotated) image match ``image_size``; those
        drawn on the stored pixels match the raw size and get the EXIF transpose. Without a
        quarter turn both sizes agree and the mask is used as drawn.
        """
        path = self.image_path(image_id)
        shown = _image.image_size(path)
        if mask.shape == shown:
            return mask
        if mask.shape == _image.raw_size(path):
            return _image.apply_orientation(mask, _image.exif_orientation(path))
        raise ImageReadError(f"{image_id}: the json says {mask.shape[0]}x{mask.shape[1]} (HxW) "
                             f"but {path} is {shown[0]}x{shown[1]}")


class CocoJsonDataset(CocoDataset):
    """One COCO-style json and image folder per split, named by a ``dataset.toml`` in
    ``root`` (:mod:`pipeline.datasets.spec`); the json's own categories are the classes.

    ``open_dataset("coco-json", root)``, or any other name with a root holding a
    ``dataset.toml`` (the name then keys its cache folder). The categories are read from the
    first split's json when the reader is made; every other json must list the same ones.

    Raises
    ------
    DatasetError
        No ``dataset.toml`` in ``root``, a bad one, an unreadable json, categories that
        differ between the jsons (naming both files).
    """

    name = "coco-json"

    def __init__(self, root):
        from pipeline.datasets.spec import SPEC_NAME, read_spec

        self.root = Path(root)
        spec = read_spec(self.root) if self.root.is_dir() else None
        if spec is None:
            raise DatasetError(f"coco-json dataset at {self.root}: no {SPEC_NAME}; write one "
                               f"(format = \"coco-json\" and a [splits.NAME] table with json = "
                               f"and images = per split) or pass --train-json/--val-json to "
                               f"qgnet-prep (docs/data.md, 'Your own COCO-style json')")
        self._index, self._missing_checked, self.year = {}, set(), None
        self._layout = "json"
        self._sources = dict(spec["splits"])
        self._keys = {s: s for s in self._sources}
        self.splits = tuple(self._sources)
        first = self.splits[0]
        data = self._read_json(first)
        self._categories = self._category_pairs(first, data)
        self._labels, self.class_names = category_labels(data["categories"],
                                                         source=str(self._sources[first][0]))
        if not self._labels:
            raise DatasetError(f"{self._sources[first][0]}: no categories with a non-zero id")
        self._index[first] = self._build_index(first, data)

    def _category_pairs(self, key: str, data: dict) -> list[tuple[int, str]]:
        try:
            return sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in data["categories"]
                          if int(c["id"]) != 0)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{self._sources[key][0]}: a category lacks an integer 'id'") from None

    def _check_categories(self, key: str, data: dict) -> None:
        pairs = self._category_pairs(key, data)
        if pairs != self._categories:
            first = self._sources[self.splits[0]][0]
            diff = sorted(set(pairs) ^ set(self._categories))[:3]
            raise DatasetError(f"{self._sources[key][0]} and {first} list different categories "
                               f"(e.g. {diff}); every split's json must list the same (id, name) "
                               f"pairs")

    def _error(self, what: str) -> DatasetError:
        return DatasetError(f"coco-json dataset at {self.root}: {what}")
