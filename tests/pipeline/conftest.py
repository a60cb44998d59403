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

def make_coco(root: Path) -> Path:
    from pycocotools import mask as mask_utils

    h, w = COCO_HW
    for split, stems in (("val", [COCO_VAL_ID, COCO_VAL_EMPTY]), ("train", [COCO_TRAIN_ID])):
        for i, stem in enumerate(stems):
            write_jpeg(root / f"{split}2014" / f"{stem}.jpg", h, w, seed=i)
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
    val = {"images": [{"id": 42, "file_name": f"{COCO_VAL_ID}.jpg", "height": h, "width": w},
                      {"id": 73, "file_name": f"{COCO_VAL_EMPTY}.jpg", "height": h, "width": w}],
           "annotations": val_anns, "categories": cats}
    train = {"images": [{"id": 9, "file_name": f"{COCO_TRAIN_ID}.jpg", "height": h, "width": w}],
             "annotations": [{"id": 10, "image_id": 9, "category_id": 18, "iscrowd": 0,
                              "segmentation": [[5, 5, 40, 5, 40, 40, 5, 40]], "area": 1225.0,
                              "bbox": [5, 5, 35, 35]}],
             "categories": cats}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(train))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    return make_coco(tmp_path / "coco")


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
