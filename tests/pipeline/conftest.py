"""Tiny datasets in the exact real layouts, written into tmp folders.

Fixtures (reuse them freely):

* ``coco_root``      COCO 2014 layout; known answers in ``COCO_VAL_ID`` / ``COCO_EXPECT``.
* ``pascal_root``    VOC2012 + SBD (benchmark_RELEASE/dataset) + SegmentationClassAug;
                     split answers in ``PASCAL_SPLITS``.
* ``pascal_voc_root``  VOC2012 only (no SBD, no Aug).
* ``folder_root``    folder layout, 10 images (jpg/png), 3 classes, no split lists.
* ``camvid_folder_root``  real CamVid (../shared/data/camvid) converted to the folder layout:
                     ids 0..10 -> 1..11, void 11 -> 255; 24 train + 12 val images (session).
* ``demo_root``      a small generated demo dataset (40 train + 20 val, seed 0; session).
* ``coco2017_root``  COCO 2017 layout (same annotations, 2017 file names).
* ``coco_json_root`` a COCO-style export, one json and image folder per split, with the quirks
                     of real exports (see :func:`make_coco_json`); answers in ``CJ_*``.
* ``fss_root``       FSS-1000 native layout, the 240 test classes (``make_fss1000``).
* ``deepglobe_root``, ``isic_root``, ``chest_root``  PATNet's layouts (``make_deepglobe``...).
* ``shared_data``    Path of ../shared/data (tests skip when a folder there is missing).
* ``dsfx``           this module: the known answers (``COCO_EXPECT``, ``PASCAL_SPLITS``...)
                     and writers (``write_jpeg``, ``write_palette_png``, ``make_folder``...).
                     Use it instead of ``from conftest import``, which is ambiguous when
                     several test folders have a conftest.py.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets._image import voc_palette

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

# The 80 COCO category names in id order; ids 1..90 without the ten unused ones.
COCO_MISSING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
COCO_IDS = tuple(i for i in range(1, 91) if i not in COCO_MISSING_IDS)

COCO_VAL_ID = "COCO_val2014_000000000042"
COCO_VAL_EMPTY = "COCO_val2014_000000000073"
COCO_TRAIN_ID = "COCO_train2014_000000000009"
COCO_HW = (60, 80)
# (row, col) -> expected label in the mask of COCO_VAL_ID
COCO_EXPECT = {
    (30, 45): 1,    # inside the big person polygon
    (25, 25): 12,   # small "stop sign" (category 13) RLE on top of the person
    (45, 60): 1,    # person overrides the crowd region where they overlap
    (55, 75): 255,  # crowd (toothbrush, iscrowd=1) only
    (4, 4): 80,     # a non-crowd toothbrush (category 90)
    (55, 5): 0,     # background
}

PASCAL_SPLITS = {
    "val": ["2007_000101", "2007_000102"],
    "train": ["2007_000001", "2007_000002", "2008_000001", "2008_000002"],
    "aug": ["2007_000001", "2007_000002", "2008_000001", "2008_000002", "2008_000003"],
}




def write_jpeg(path: Path, h: int, w: int, seed: int = 0, **save_kw) -> np.ndarray:
    """A smooth random RGB picture saved as JPEG; returns the array written."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    img = np.stack([base[0] + 40 * np.sin(xx / 7.0), base[1] + 40 * np.cos(yy / 5.0),
                    base[2] + 0.5 * (xx + yy)], axis=2)
    arr = np.clip(img, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90, **save_kw)
    return arr


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    """Save an index mask as a VOC-style palette PNG (mode P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8))
    im.putpalette(voc_palette())
    assert im.mode == "P"
    im.save(path)


def voc_mask(h: int, w: int, cls: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Background with one rectangle of ``cls`` (y0, y1, x0, x1) and a 255 border around it."""
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = 255
    m[y0:y1, x0:x1] = cls
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, starting with a zero run)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    counts, cur, run = [], False, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


# ----------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------

def coco_stem(stem: str, year: int) -> str:
    """A 2014 file stem (``COCO_val2014_000000000042``) as the given year names it."""
    return stem if year == 2014 else stem.rsplit("_", 1)[1]


def make_coco(root: Path, year: int = 2014) -> Path:
    from pycocotools import mask as mask_utils

    h, w = COCO_HW
    name = {s: coco_stem(s, year) for s in (COCO_VAL_ID, COCO_VAL_EMPTY, COCO_TRAIN_ID)}
    for split, stems in (("val", [COCO_VAL_ID, COCO_VAL_EMPTY]), ("train", [COCO_TRAIN_ID])):
        for i, stem in enumerate(stems):
            write_jpeg(root / f"{split}{year}" / f"{name[stem]}.jpg", h, w, seed=i)
    small = np.zeros((h, w), np.uint8)
    small[20:31, 20:31] = 1  # 121 px
    rle = mask_utils.encode(np.asfortranarray(small))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((h, w), np.uint8)
    crowd[40:60, 50:80] = 1
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in
            zip(COCO_IDS, COCO_NAMES, strict=True)]
    val_anns = [  # the small object comes first: drawing order must not depend on json order
        {"id": 1, "image_id": 42, "category_id": 13, "segmentation": rle, "iscrowd": 0,
         "area": 121.0, "bbox": [20, 20, 11, 11]},
        {"id": 2, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 2400.0,
         "segmentation": [[10, 10, 70, 10, 70, 50, 10, 50]], "bbox": [10, 10, 60, 40]},
        {"id": 3, "image_id": 42, "category_id": 90, "iscrowd": 1, "area": 600.0,
         "segmentation": uncompressed_rle(crowd), "bbox": [50, 40, 30, 20]},
        {"id": 4, "image_id": 42, "category_id": 90, "iscrowd": 0, "area": 64.0,
         "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]], "bbox": [0, 0, 8, 8]},
    ]
    val = {"images": [{"id": 42, "file_name": f"{name[COCO_VAL_ID]}.jpg", "height": h, "width": w},
                      {"id": 73, "file_name": f"{name[COCO_VAL_EMPTY]}.jpg", "height": h,
                       "width": w}],
           "annotations": val_anns, "categories": cats}
    train = {"images": [{"id": 9, "file_name": f"{name[COCO_TRAIN_ID]}.jpg", "height": h,
                         "width": w}],
             "annotations": [{"id": 10, "image_id": 9, "category_id": 18, "iscrowd": 0,
                              "segmentation": [[5, 5, 40, 5, 40, 40, 5, 40]], "area": 1225.0,
                              "bbox": [5, 5, 35, 35]}],
             "categories": cats}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_val{year}.json").write_text(json.dumps(val))
    (root / "annotations" / f"instances_train{year}.json").write_text(json.dumps(train))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    return make_coco(tmp_path / "coco")


@pytest.fixture
def coco2017_root(tmp_path) -> Path:
    return make_coco(tmp_path / "coco", year=2017)


# ----------------------------------------------------------------------------------------
# a COCO-style export (labelme / CVAT / Label Studio), one json + image folder per split
# ----------------------------------------------------------------------------------------

# the export's own categories: id 0 is labelme's background entry; ids have a gap (7)
CJ_CATEGORIES = [{"id": 0, "name": "_background_"}, {"id": 3, "name": "mug"},
                 {"id": 5, "name": "spoon"}, {"id": 9, "name": "kettle"}]
CJ_CLASSES = ("mug", "spoon", "kettle")  # labels 1, 2, 3 (rank of 3, 5, 9)
CJ_HW = (48, 64)


def _box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_coco_json(root: Path, *, n: int = 6) -> Path:
    """``root/{train,val}/annotations.json`` and ``root/{train,val}/images/``: ``n`` images a
    split, every one with a 30 x 40 mug box (label 1) and a 20 x 20 kettle box (label 3).

    Quirks of real exports in the val split: image ``v0`` is a grayscale JPEG and ``v1`` a
    CMYK JPEG; ``v2`` lives in a sub folder (``file_name`` ``sub\\v2.jpg``, as a Windows export
    writes it); ``v3``'s entry has
    no height / width; the spoon of ``v0`` is two polygons (one object); ``v1`` has a crowd
    region (uncompressed RLE, label 255) the kettle partly covers; one annotation refers to
    image id 999, which the json does not list. The train split is plain.
    """
    from PIL import Image as _Image

    h, w = CJ_HW
    for split in ("train", "val"):
        images, anns = [], []
        for i in range(n):
            stem = f"{split[0]}{i}"
            file_name = f"sub/{stem}.jpg" if (split, i) == ("val", 2) else f"{stem}.jpg"
            path = root / split / "images" / file_name
            arr = write_jpeg(path, h, w, seed=i + (100 if split == "val" else 0))
            if (split, i) == ("val", 0):
                _Image.fromarray(arr).convert("L").save(path, quality=90)
            if (split, i) == ("val", 1):
                _Image.fromarray(arr).convert("CMYK").save(path, quality=90)
            entry = {"id": 100 + i, "file_name": file_name.replace("/", "\\") if i == 2 else
                     file_name, "height": h, "width": w}
            if (split, i) == ("val", 3):
                del entry["height"], entry["width"]
            images.append(entry)
            anns.append({"id": 1000 + 10 * i, "image_id": 100 + i, "category_id": 3,
                         "iscrowd": 0, "segmentation": [_box(2, 2, 42, 32)]})
            anns.append({"id": 1001 + 10 * i, "image_id": 100 + i, "category_id": 9,
                         "iscrowd": 0, "segmentation": [_box(40, 26, 60, 46)]})
        if split == "val":
            anns.append({"id": 5000, "image_id": 100, "category_id": 5, "iscrowd": 0,
                         "segmentation": [_box(44, 2, 50, 8), _box(54, 2, 60, 8)]})
            crowd = np.zeros((h, w), np.uint8)
            crowd[36:48, 30:64] = 1
            anns.append({"id": 5001, "image_id": 101, "category_id": 3, "iscrowd": 1,
                         "segmentation": uncompressed_rle(crowd)})
            anns.append({"id": 5002, "image_id": 999, "category_id": 3, "iscrowd": 0,
                         "segmentation": [_box(0, 0, 5, 5)]})
        data = {"images": images, "annotations": anns, "categories": CJ_CATEGORIES}
        (root / split / "annotations.json").write_text(json.dumps(data))
    return root


def write_spec(root: Path, splits: dict[str, tuple[str, str | None]]) -> Path:
    """A ``dataset.toml`` in ``root`` naming ``{split: (json, images)}`` (relative paths)."""
    lines = ['format = "coco-json"', ""]
    for split, (j, d) in splits.items():
        lines += [f"[splits.{split}]", f'json = "{j}"'] + ([f'images = "{d}"'] if d else []) + [""]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text("\n".join(lines))
    return root


@pytest.fixture
def coco_json_root(tmp_path) -> Path:
    """The export of :func:`make_coco_json` under ``tmp_path/export`` with a dataset.toml."""
    export = make_coco_json(tmp_path / "export")
    return write_spec(export, {s: (f"{s}/annotations.json", f"{s}/images")
                               for s in ("train", "val")})


# ----------------------------------------------------------------------------------------
# FSS-1000 and PATNet's cross-domain layouts
# ----------------------------------------------------------------------------------------

def write_object_png(path: Path, obj: np.ndarray, style: str = "L255") -> None:
    """An object mask file: ``L255`` grey 0/255, ``RGB255`` 3-channel 0/255 (cv2.imwrite of
    a binary map, as PATNet's preprocessing writes), ``L01`` grey 0/1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = np.asarray(obj, bool)
    if style == "L01":
        Image.fromarray(obj.astype(np.uint8)).save(path)
    elif style == "RGB255":
        Image.fromarray(np.repeat((obj * 255).astype(np.uint8)[:, :, None], 3, 2)).save(path)
    else:
        Image.fromarray((obj * 255).astype(np.uint8)).save(path)


def object_box(h: int, w: int, k: int) -> np.ndarray:
    """A box whose size depends on ``k`` (so every mask differs)."""
    m = np.zeros((h, w), bool)
    m[1:1 + 2 + k % (h - 3), 2:w - 1] = True
    return m


FSS_SIDE = 12  # the real images are 224 x 224; the layout, not the size, is under test
FSS_SPACED = "american_alligator"  # written "american alligator" on disk
FSS_01 = "accordion"  # masks 0/1 instead of 0/255
FSS_RGB = "andean_condor"  # RGB 0/255 masks


def make_fss1000(root: Path, classes=None, *, n: int = 10) -> Path:
    """FSS-1000's layout under ``root/FSS-1000``: for each class (default: the 240 test
    classes) ``1.jpg .. n.jpg`` and ``N.png`` masks. Quirks: :data:`FSS_SPACED` is a folder
    with a space; :data:`FSS_01` has 0/1 masks and :data:`FSS_RGB` RGB ones; the first class
    holds a mask of another size (``3.png``, 2x) and the files ``notes.txt`` and ``4.x.jpg``
    that the references' listing skips."""
    from pipeline.datasets.fss1000_split import TEST

    base = root / "FSS-1000"
    rng = np.random.default_rng(0)
    for ci, name in enumerate(TEST if classes is None else classes):
        folder = base / (name.replace("_", " ") if name == FSS_SPACED else name)
        folder.mkdir(parents=True)
        for k in range(1, n + 1):
            img = rng.integers(0, 255, (FSS_SIDE, FSS_SIDE, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"{k}.jpg", quality=90)
            obj = object_box(FSS_SIDE, FSS_SIDE, ci + k)
            if ci == 0 and k == 3:
                obj = np.kron(obj, np.ones((2, 2), bool))
            style = "L01" if name == FSS_01 else ("RGB255" if name == FSS_RGB else "L255")
            write_object_png(folder / f"{k}.png", obj, style)
        if ci == 0:
            (folder / "notes.txt").write_text("not an image")
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "4.x.jpg")
    return root


@pytest.fixture(scope="session")
def fss_root(tmp_path_factory) -> Path:
    return make_fss1000(tmp_path_factory.mktemp("fss") / "datapath")


DG_SIDE = 16
DG_SHARED = "100694_sat_00"  # a tile in folders 1 and 3, with each folder's mask


def make_deepglobe(root: Path, counts=(5, 3, 4, 2, 3, 2)) -> Path:
    """PATNet's Deepglobe layout under ``root/Deepglobe``: folder k holds ``counts[k-1]``
    tiles in ``test/origin`` and RGB 0/255 masks in ``test/groundtruth``."""
    rng = np.random.default_rng(1)
    for k, c in enumerate(counts, start=1):
        for j in range(c):
            stem = DG_SHARED if (j == 0 and k in (1, 3)) else f"{200000 + 10 * k + j}_sat_{j:02d}"
            img = rng.integers(0, 255, (DG_SIDE, DG_SIDE, 3), dtype=np.uint8)
            path = root / "Deepglobe" / str(k) / "test" / "origin" / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=90)
            write_object_png(root / "Deepglobe" / str(k) / "test" / "groundtruth" / f"{stem}.png",
                             object_box(DG_SIDE, DG_SIDE, k + j), "RGB255")
    return root


@pytest.fixture
def deepglobe_root(tmp_path) -> Path:
    return make_deepglobe(tmp_path / "datapath")


ISIC_TABLE = {"ISIC_0000000": "nevus", "ISIC_0000001": "nevus", "ISIC_0000003": "nevus",
              "ISIC_0000004": "melanoma", "ISIC_0000013": "melanoma",
              "ISIC_0000030": "seborrheic_keratosis", "ISIC_0000031": "seborrheic_keratosis",
              "ISIC_0000099": "melanoma"}


def make_isic(root: Path, *, folders: bool = True, csv: bool = True) -> Path:
    """ISIC 2018 task 1 under ``root/ISIC``: images sorted into PATNet's folders 1 (nevus),
    2 (seborrheic_keratosis), 3 (melanoma) (one of the two numberings PATNet's users use),
    or flat as downloaded; masks ``*_segmentation.png``; PATNet's ``class_id.csv``.
    ``ISIC_0000099`` has an image but no mask."""
    base = root / "ISIC"
    folder_of = {"nevus": "1", "seborrheic_keratosis": "2", "melanoma": "3"}
    rng = np.random.default_rng(2)
    for i, (stem, cls) in enumerate(ISIC_TABLE.items()):
        sub = base / "ISIC2018_Task1-2_Training_Input" / (folder_of[cls] if folders else "")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = 10 + i, 14
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            sub / f"{stem}.jpg", quality=90)
        if stem != "ISIC_0000099":
            write_object_png(base / "ISIC2018_Task1_Training_GroundTruth" /
                             f"{stem}_segmentation.png", object_box(h, w, i))
    (base / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("licence")
    if csv:
        (base / "class_id.csv").write_text(
            "ID,Class\n" + "".join(f"{k},{v}\n" for k, v in ISIC_TABLE.items()))
    return root


@pytest.fixture
def isic_root(tmp_path) -> Path:
    return make_isic(tmp_path / "datapath")


CHEST_IDS = ("CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0003_1", "CHNCXR_0010_1")


def make_chest(root: Path) -> Path:
    """The Kaggle release's layout under ``root/LungSegmentation``: grayscale ``CXR_png``
    images, ``masks/<stem>_mask.png`` for the Shenzhen ones and two Montgomery masks without
    the suffix (``MCUCXR_0001_0.png``), which PATNet's reader cannot pair."""
    base = root / "LungSegmentation"
    (base / "CXR_png").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i, stem in enumerate(CHEST_IDS + ("MCUCXR_0001_0", "MCUCXR_0002_0")):
        h, w = 18 + i, 16
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(
            base / "CXR_png" / f"{stem}.png")
        name = f"{stem}.png" if stem.startswith("MCU") else f"{stem}_mask.png"
        write_object_png(base / "masks" / name, object_box(h, w, i))
    return root


@pytest.fixture
def chest_root(tmp_path) -> Path:
    return make_chest(tmp_path / "datapath")


# ----------------------------------------------------------------------------------------
# PASCAL VOC 2012 + SBD
# ----------------------------------------------------------------------------------------

def make_pascal(root: Path, *, sbd: bool = True, aug: bool = True) -> Path:
    from scipy.io import savemat

    voc = root / "VOC2012"
    h, w = 40, 50
    voc_train, voc_val = ["2007_000001", "2007_000002"], ["2007_000101", "2007_000102"]
    sbd_only = ["2008_000001", "2008_000002", "2008_000003"]
    for i, name in enumerate(voc_train + voc_val + (sbd_only if sbd else [])):
        write_jpeg(voc / "JPEGImages" / f"{name}.jpg", h, w, seed=i)
    # VOC masks: class (i + 1) in a box with a 255 border
    for i, name in enumerate(voc_train + voc_val):
        write_palette_png(voc / "SegmentationClass" / f"{name}.png",
                          voc_mask(h, w, i + 1, (10, 30, 10, 40)))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(voc_train) + "\n")
    (sets / "val.txt").write_text("\n".join(voc_val) + "\n")
    (sets / "trainval.txt").write_text("\n".join(voc_train + voc_val) + "\n")
    if sbd:
        ds = voc / "benchmark_RELEASE" / "dataset"
        (ds / "cls").mkdir(parents=True)
        (ds / "img").mkdir()
        # SBD masks (no 255): class 10 + k everywhere in the top half; 2007_000002 also has
        # an SBD mask (class 20) that must lose against its VOC PNG.
        for k, name in enumerate(sbd_only + ["2007_000002"] + voc_val):
            seg = np.zeros((h, w), np.uint8)
            seg[: h // 2] = 20 if name == "2007_000002" else 10 + k
            savemat(ds / "cls" / f"{name}.mat",
                    {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((20, 1), object),
                               "CategoriesPresent": np.array([[int(seg.max())]])}})
        (ds / "train.txt").write_text("\n".join(["2007_000002", "2008_000001", "2008_000002",
                                                 "2007_000101"]) + "\n")
        (ds / "val.txt").write_text("\n".join(["2008_000003", "2007_000102"]) + "\n")
        (ds / "train_noval.txt").write_text("\n".join(["2007_000002", "2008_000001",
                                                       "2008_000002"]) + "\n")
    if aug:  # SegmentationClassAug (grayscale): beats SBD for 2008_000002
        aug_dir = voc / "SegmentationClassAug"
        aug_dir.mkdir()
        m = np.zeros((h, w), np.uint8)
        m[:, : w // 2] = 7
        Image.fromarray(m).save(aug_dir / "2008_000002.png")
    return voc


@pytest.fixture
def pascal_root(tmp_path) -> Path:
    return make_pascal(tmp_path / "VOCdevkit")


@pytest.fixture
def pascal_voc_root(tmp_path) -> Path:
    return make_pascal(tmp_path / "VOCdevkit", sbd=False, aug=False)


# ----------------------------------------------------------------------------------------
# folder layout, CamVid, demo
# ----------------------------------------------------------------------------------------

FOLDER_CLASSES = ("cat", "dog", "kite")


def make_folder(root: Path, n: int = 10) -> Path:
    """``n`` images img_00..: even ones JPEG + grayscale mask, odd ones PNG + palette mask;
    image i holds class (i % 3) + 1 in a box and a 255 ignore stripe."""
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        h, w = 30 + i, 40
        name = f"img_{i:02d}"
        if i % 2 == 0:
            write_jpeg(root / "images" / f"{name}.jpg", h, w, seed=i)
        else:
            (root / "images").mkdir(exist_ok=True)
            Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(
                root / "images" / f"{name}.png")
        m = np.zeros((h, w), np.uint8)
        m[5:20, 5:30] = i % 3 + 1
        m[:, 35:] = 255
        if i % 2 == 0:
            Image.fromarray(m).save(root / "masks" / f"{name}.png")
        else:
            write_palette_png(root / "masks" / f"{name}.png", m)
    (root / "classes.txt").write_text("\n".join(FOLDER_CLASSES) + "\n")
    return root


@pytest.fixture
def folder_root(tmp_path) -> Path:
    return make_folder(tmp_path / "folder")


CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
                  "car", "pedestrian", "bicyclist")


@pytest.fixture(scope="session")
def dsfx():
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def camvid_folder_root(tmp_path_factory) -> Path:
    """Real CamVid in the folder layout: 24 train + 12 val images (every 8th), ids 0..10 ->
    1..11, void 11 -> 255; train.txt / val.txt keep CamVid's own split."""
    src = SHARED_DATA / "camvid"
    if not (src / "train" / "images").is_dir():
        pytest.skip(f"real CamVid data not found at {src} (expected "
                    f"{{train,val}}/images/*.jpg and masks/*.png)")
    root = tmp_path_factory.mktemp("camvid") / "camvid"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lut = np.arange(256, dtype=np.uint8)
    lut[:11] = np.arange(1, 12)
    lut[11:] = 255
    for split, n in (("train", 24), ("val", 12)):
        names = sorted(p.stem for p in (src / split / "images").glob("*.jpg"))[::8][:n]
        for name in names:
            shutil.copyfile(src / split / "images" / f"{name}.jpg", root / "images" / f"{name}.jpg")
            m = np.asarray(Image.open(src / split / "masks" / f"{name}.png"))
            Image.fromarray(lut[m]).save(root / "masks" / f"{name}.png")
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from pipeline.datasets.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "data", n_train=40, n_val=20, seed=0)
