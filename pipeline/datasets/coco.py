"""MS COCO 2014 instances, rendered as semantic class masks (COCO-20i).

Layout::

    ROOT/train2014/COCO_train2014_000000000009.jpg ...
    ROOT/val2014/COCO_val2014_000000000042.jpg ...
    ROOT/annotations/instances_train2014.json, instances_val2014.json

Any COCO-style json plus an image folder opens with :meth:`CocoDataset.from_json` (one split).

Labels: the category ids (1..90 with gaps) map to 1..C by rank in the sorted id list, so in
COCO person = 1 ... toothbrush = 80. A category with id 0 (labelme writes ``_background_``
there) is not a class: it is skipped with a logged note, and a json whose annotations use it
is rejected.

Mask of an image (:meth:`CocoDataset.load_mask`): crowd regions (``iscrowd=1``, uncompressed
RLE) are painted 255 first; then the other instances largest visible area first, so smaller
objects stay on top; a non-crowd instance therefore overrides crowd 255 where they overlap.
Polygons, uncompressed and compressed RLE are decoded with pycocotools.

The json of a split is parsed on first use (the train json is about 450 MB) and dropped when
the reader is pickled; ``image_path`` and ``image_size`` of 2014 ids never need it.
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
from pipeline.errors import IGNORE, DatasetError, ImageReadError

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

WHERE = ("COCO 2014: https://cocodataset.org/#download (2014 Train images, 2014 Val images "
         "and 2014 Train/Val annotations), unpacked into ROOT")
_EXPECTED = ("expected train2014/, val2014/ and annotations/instances_{train,val}2014.json "
             "(at least one complete split)")
_SPLIT_OF_STEM = re.compile(r"^COCO_(train|val)2014_")


@dataclass
class _SplitIndex:
    """What one parsed json keeps: per stem its (coco id, file name, H, W), per coco image id
    its annotations as (category id, iscrowd, segmentation, annotation id)."""

    images: dict[str, tuple[int, str, int, int]]
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
    """Reader for COCO 2014 instances as semantic masks (``open_dataset("coco", root)``).

    Parameters
    ----------
    root : path
        Folder holding ``train2014/``, ``val2014/`` and ``annotations/``.

    Raises
    ------
    DatasetError
        No complete split under ``root`` (the message says what is expected and where to get
        it), or (later, on first use of a split) a json whose categories differ from COCO's.
    """

    name = "coco"

    def __init__(self, root, *, _single: tuple[Path, Path, str] | None = None):
        self.root = Path(root)
        self._index: dict[str, _SplitIndex] = {}
        self._layout = "json" if _single is not None else "2014"
        if _single is not None:  # from_json
            json_path, image_dir, split = _single
            self._jsons = {split: json_path}
            self._image_dirs = {split: image_dir}
            self.splits = (split,)
            data = self._read_json(split)
            self._labels, self.class_names = category_labels(data["categories"],
                                                             source=str(json_path))
            if not self._labels:
                raise DatasetError(f"{json_path}: no categories with a non-zero id")
            self._index[split] = self._build_index(split, data)
            return
        self._jsons, self._image_dirs = {}, {}
        if not self.root.is_dir():
            raise self._error("folder does not exist")
        for s in ("train", "val"):
            j = self.root / "annotations" / f"instances_{s}2014.json"
            d = self.root / f"{s}2014"
            if j.is_file() and d.is_dir():
                self._jsons[s], self._image_dirs[s] = j, d
        if not self._jsons:
            have = sorted(p.name + ("/" if p.is_dir() else "") for p in self.root.iterdir())[:8]
            raise self._error(f"no complete split (found: {', '.join(have) or 'nothing'})")
        self.splits = tuple(self._jsons)
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

    # -- json parsing (lazy, per split) -----------------------------------------------
    def _read_json(self, split: str) -> dict:
        path = self._jsons[split]
        log.info("parsing %s", path)
        try:
            with path.open("rb") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot parse {path}: {exc}; {_EXPECTED}. Get {WHERE}") from exc
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise DatasetError(f"{path} has no {key!r} list; not a COCO instances json")
        return data

    def _build_index(self, split: str, data: dict) -> _SplitIndex:
        path = self._jsons[split]
        images: dict[str, tuple[int, str, int, int]] = {}
        by_id: dict[int, str] = {}
        for im in data["images"]:
            stem = Path(im["file_name"]).stem
            if stem in images:
                raise DatasetError(f"{path}: two images with file stem {stem}")
            images[stem] = (int(im["id"]), im["file_name"], int(im["height"]), int(im["width"]))
            by_id[int(im["id"])] = stem
        index = _SplitIndex(images)
        zero = 0
        for a in data["annotations"]:
            cid = int(a["category_id"])
            if cid not in self._labels:
                if cid == 0:
                    zero += 1
                    continue
                raise DatasetError(f"{path}: annotation {a.get('id')} has category id {cid}, "
                                   f"which is not in the categories list")
            index.anns.setdefault(int(a["image_id"]), []).append(
                (cid, int(a.get("iscrowd", 0)), a["segmentation"], int(a.get("id", 0))))
        if zero:
            raise DatasetError(f"{path}: {zero} annotation(s) use category id 0 (background); "
                               f"class ids must be non-zero")
        return index

    def _split_index(self, split: str) -> _SplitIndex:
        if split not in self._index:
            data = self._read_json(split)
            if self._labels != category_labels(data["categories"],
                                               source=str(self._jsons[split]))[0]:
                raise DatasetError(f"{self._jsons[split]}: categories differ from the 80 COCO "
                                   f"categories; open it with CocoDataset.from_json instead")
            self._index[split] = self._build_index(split, data)
        return self._index[split]

    def _split_of(self, image_id: str) -> str:
        m = _SPLIT_OF_STEM.match(image_id)
        if m and m.group(1) in self._jsons:
            return m.group(1)
        for s in self.splits:
            if image_id in self._split_index(s).images:
                return s
        raise KeyError(f"no image {image_id!r} in the coco dataset at {self.root}")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_index"] = {}  # parsed jsons are rebuilt lazily in the receiving process
        return state

    # -- the Dataset interface --------------------------------------------------------
    def check_split(self, split: str) -> None:
        if self._layout == "2014" and split in ("train", "val") and split not in self.splits:
            raise self._error(f"split {split!r} is missing (need {split}2014/ and "
                              f"annotations/instances_{split}2014.json)")
        super().check_split(split)

    def ids(self, split: str) -> list[str]:
        self.check_split(split)
        return sorted(self._split_index(split).images)

    def image_path(self, image_id: str) -> Path:
        split = self._split_of(image_id)
        m = _SPLIT_OF_STEM.match(image_id)
        if m and split not in self._index:  # 2014 naming: no need to parse the json
            return self._image_dirs[split] / f"{image_id}.jpg"
        return self._image_dirs[split] / self._split_index(split).images[image_id][1]

    def image_size(self, image_id: str) -> tuple[int, int]:
        return _image.image_size(self.image_path(image_id))

    def load_image(self, image_id: str) -> np.ndarray:
        return _image.load_rgb(self.image_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray:
        split = self._split_of(image_id)
        index = self._split_index(split)
        coco_id, _, h, w = index.images[image_id]
        mask = np.zeros((h, w), np.uint8)
        crowd, objects = [], []
        for cid, iscrowd, seg, ann_id in index.anns.get(coco_id, ()):
            try:
                m = _decode(seg, h, w)
            except (ValueError, TypeError, KeyError) as exc:
                raise ImageReadError(f"{self._jsons[split]}: annotation {ann_id} of "
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
