"""Dataset readers: known answers on tiny fixtures in the real layouts, and on real data."""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.datasets import (
    DATASETS,
    CocoDataset,
    DatasetError,
    FolderDataset,
    ImageReadError,
    PascalDataset,
    _image,
    open_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
LABELME = SHARED_DATA / "voc_labelme_examples" / "examples"


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see ../shared/data)")
    return path


# ----------------------------------------------------------------------------------------
# registry and root validation
# ----------------------------------------------------------------------------------------

def test_registry_is_a_plain_dict():
    assert type(DATASETS) is dict
    assert sorted(DATASETS) == ["chest", "coco", "coco-json", "deepglobe", "demo", "folder",
                                "fss1000", "isic", "pascal"]


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'voc'.*chest, coco, coco-json, deepglobe, demo, folder"):
        open_dataset("voc", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'a b'.*--root"):
        open_dataset("a b", "/nowhere")


def test_any_other_name_is_a_folder_dataset_with_its_own_cache_key(folder_root, tmp_path):
    ds = open_dataset("mydata", folder_root)
    assert isinstance(ds, FolderDataset) and ds.name == "mydata"
    assert ds.ids("all") == open_dataset("folder", folder_root).ids("all")
    with pytest.raises(DatasetError, match="expected images/"):
        open_dataset("mydata", tmp_path / "empty")


@pytest.mark.parametrize("name, expect", [
    ("folder", "expected images/"),
    ("pascal", "host.robots.ox.ac.uk"),
    ("coco", "cocodataset.org"),
])
def test_empty_folder_is_a_dataset_error(tmp_path, name, expect):
    with pytest.raises(DatasetError, match=expect) as err:
        open_dataset(name, tmp_path)
    assert str(tmp_path) in str(err.value)


def test_coco_root_without_annotations(tmp_path, dsfx):
    dsfx.write_jpeg(tmp_path / "val2014" / f"{dsfx.COCO_VAL_ID}.jpg", 10, 10)
    (tmp_path / "train2014").mkdir()
    with pytest.raises(DatasetError) as err:
        open_dataset("coco", tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "annotations/instances_" in msg and "cocodataset.org" in msg


def test_default_root_is_under_the_cache(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "pascal" / "data"))):
        open_dataset("pascal", cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------
# image decoding
# ----------------------------------------------------------------------------------------

def test_truncated_jpeg_is_an_image_read_error(tmp_path, dsfx):
    path = tmp_path / "cut.jpg"
    dsfx.write_jpeg(path, 64, 80)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageReadError, match="cut.jpg"):
        _image.load_rgb(path)
    assert _image.image_size(path) == (64, 80)  # the header is still fine
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        _image.load_rgb(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match="missing image"):
        _image.load_rgb(tmp_path / "nope.jpg")


def test_exif_orientation_is_applied(tmp_path):
    # stored 20 (H) x 40 (W); a red block at the stored top-left corner
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :] = (0, 0, 255)
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    img = _image.load_rgb(path)
    assert img.shape == (40, 20, 3)
    assert _image.image_size(path) == (40, 20)
    assert _image.raw_size(path) == (20, 40)
    # a quarter turn clockwise moves the stored top-left to the displayed top-right
    assert img[2, 17, 0] > 200 and img[2, 17, 2] < 60
    assert img[37, 2, 2] > 200 and img[37, 2, 0] < 60


def _save(mode_img: Image.Image, path: Path, **kw) -> Path:
    mode_img.save(path, **kw)
    return path


def test_modes_load_as_rgb(tmp_path):
    gray = _save(Image.fromarray(np.full((5, 7), 100, np.uint8)), tmp_path / "g.png")
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped
    rgba_p = _save(Image.fromarray(rgba), tmp_path / "a.png")
    cmyk = _save(Image.new("CMYK", (7, 5), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    pal = Image.fromarray(np.ones((5, 7), np.uint8))
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal_p = _save(pal, tmp_path / "p.png")
    g16 = _save(Image.fromarray(np.full((5, 7), 65535, np.uint16)), tmp_path / "g16.png")
    for path, expect in ((gray, (100, 100, 100)), (rgba_p, (200, 0, 0)), (pal_p, (10, 20, 30)),
                         (g16, (255, 255, 255))):
        img = _image.load_rgb(path)
        assert img.shape == (5, 7, 3) and img.dtype == np.uint8, path
        assert tuple(img[2, 3]) == expect, path
    img = _image.load_rgb(cmyk)
    assert img.shape == (5, 7, 3) and img[2, 3, 0] > 200 and img[2, 3, 1:].max() < 60


# ----------------------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------------------

def test_folder_reader(folder_root, dsfx):
    ds = open_dataset("folder", folder_root)
    assert isinstance(ds, FolderDataset) and ds.class_names == dsfx.FOLDER_CLASSES
    assert ds.num_classes == 3 and ds.splits == ("train", "val", "all")
    names = [f"img_{i:02d}" for i in range(10)]
    assert ds.ids("all") == names
    assert ds.ids("val") == ["img_04", "img_09"]  # sorted index % 5 == 4
    assert ds.ids("train") == [n for n in names if n not in ("img_04", "img_09")]
    for i, name in enumerate(names):
        img, mask = ds.load_image(name), ds.load_mask(name)
        assert img.shape == (30 + i, 40, 3) and ds.image_size(name) == (30 + i, 40)
        assert mask.shape == (30 + i, 40) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, i % 3 + 1, 255}  # palette masks give indices
    assert ds.image_path("img_01").name == "img_01.png"
    with pytest.raises(ValueError, match="no split 'test'"):
        ds.ids("test")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.ids("val") == ds.ids("val")
    assert np.array_equal(clone.load_mask("img_03"), ds.load_mask("img_03"))


def test_folder_split_lists(folder_root):
    (folder_root / "train.txt").write_text("img_00\nimg_01\n\n")
    (folder_root / "val.txt").write_text("img_02\n")
    ds = FolderDataset(folder_root)
    assert ds.ids("train") == ["img_00", "img_01"] and ds.ids("val") == ["img_02"]
    (folder_root / "val.txt").write_text("img_02\nimg_99\n")
    with pytest.raises(DatasetError, match="img_99"):
        FolderDataset(folder_root)
    (folder_root / "val.txt").unlink()
    with pytest.raises(DatasetError, match="val.txt does not"):
        FolderDataset(folder_root)


def test_folder_bad_masks(folder_root):
    masks = folder_root / "masks"
    (masks / "img_00.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "img_02.png")
    bad = np.zeros((33, 40), np.uint8)
    bad[0, 0], bad[1, 1] = 4, 17
    Image.fromarray(bad).save(masks / "img_03.png")
    ds = FolderDataset(folder_root)
    assert "img_00" in ds.ids("all")  # listed, but its mask is missing
    with pytest.raises(ImageReadError, match="missing mask masks/img_00.png"):
        ds.load_mask("img_00")
    with pytest.raises(ImageReadError, match=r"img_02.png is 5x5 .* image is 32x40"):
        ds.load_mask("img_02")
    with pytest.raises(ImageReadError, match=r"img_03.png holds values 4, 17 outside 0..3"):
        ds.load_mask("img_03")
    Image.fromarray(np.zeros((33, 40, 3), np.uint8)).save(masks / "img_03.png")
    with pytest.raises(ImageReadError, match="mode RGB"):
        ds.load_mask("img_03")


def test_folder_missing_classes(folder_root):
    (folder_root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="no classes.txt"):
        FolderDataset(folder_root)


@pytest.mark.realdata
def test_camvid_as_folder(camvid_folder_root, dsfx):
    ds = open_dataset("folder", camvid_folder_root)
    assert ds.class_names == dsfx.CAMVID_CLASSES
    assert len(ds.ids("train")) == 24 and len(ds.ids("val")) == 12
    assert not set(ds.ids("train")) & set(ds.ids("val"))
    images_with = np.zeros(12, int)
    for name in ds.ids("train"):
        mask = ds.load_mask(name)
        assert mask.shape == (360, 480) == ds.image_size(name)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(1, 12)) | {255}
        images_with[sorted(values - {255})] += 1
    assert ds.load_image(ds.ids("val")[0]).shape == (360, 480, 3)
    assert images_with[1:12].min() >= 3  # every class shows up in several images
    assert images_with[[1, 2, 4]].min() >= 20  # sky, building, road nearly everywhere


# ----------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------

def test_coco_masks(coco_root, dsfx):
    ds = open_dataset("coco", coco_root)
    assert ds.splits == ("train", "val") and ds.num_classes == 80
    assert ds.class_names[0] == "person" and ds.class_names[-1] == "toothbrush"
    assert ds.class_names[11] == "stop sign"  # category 13 -> label 12 (id 12 does not exist)
    assert ds._index == {}  # nothing parsed yet
    assert ds.image_path(dsfx.COCO_VAL_ID) == coco_root / "val2014" / f"{dsfx.COCO_VAL_ID}.jpg"
    assert ds.image_size(dsfx.COCO_VAL_ID) == dsfx.COCO_HW
    assert ds._index == {}  # 2014 ids need no json for paths and sizes
    assert ds.ids("val") == [dsfx.COCO_VAL_ID, dsfx.COCO_VAL_EMPTY]
    assert set(ds._index) == {"val2014"}  # the train json stays unparsed
    mask = ds.load_mask(dsfx.COCO_VAL_ID)
    assert mask.shape == dsfx.COCO_HW and mask.dtype == np.uint8
    for (r, c), label in dsfx.COCO_EXPECT.items():
        assert mask[r, c] == label, (r, c)
    assert set(np.unique(mask)) == {0, 1, 12, 80, 255}
    assert 100 <= (mask == 12).sum() <= 144  # the whole small object is visible
    assert not ds.load_mask(dsfx.COCO_VAL_EMPTY).any()
    assert ds.load_image(dsfx.COCO_VAL_ID).shape == dsfx.COCO_HW + (3,)
    assert ds.ids("train") == [dsfx.COCO_TRAIN_ID]
    assert set(np.unique(ds.load_mask(dsfx.COCO_TRAIN_ID))) == {0, 17}  # dog: id 18 -> 17
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._index == {}
    assert np.array_equal(clone.load_mask(dsfx.COCO_VAL_ID), mask)


def test_coco_missing_split(coco_root):
    (coco_root / "annotations" / "instances_train2014.json").unlink()
    ds = CocoDataset(coco_root)
    assert ds.splits == ("val",)
    with pytest.raises(DatasetError, match="instances_train2014.json"):
        ds.ids("train")


def test_coco_from_json_ranks_its_own_categories(coco_root, tmp_path, dsfx):
    import json

    data = json.loads((coco_root / "annotations" / "instances_val2014.json").read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] in (1, 13, 90)]
    data["categories"].append({"id": 0, "name": "_background_"})
    path = tmp_path / "small.json"
    path.write_text(json.dumps(data))
    ds = CocoDataset.from_json(path, coco_root / "val2014", split="test")
    assert ds.class_names == ("person", "stop sign", "toothbrush") and ds.splits == ("test",)
    mask = ds.load_mask(dsfx.COCO_VAL_ID)
    assert set(np.unique(mask)) == {0, 1, 2, 3, 255}
    assert mask[25, 25] == 2 and mask[4, 4] == 3
    data["annotations"][0]["category_id"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category id 0"):
        CocoDataset.from_json(path, coco_root / "val2014")


@pytest.mark.realdata
def test_labelme_coco_json_matches_its_voc_masks():
    root = needs(LABELME / "instance_segmentation")
    ds = CocoDataset.from_json(root / "data_dataset_coco" / "annotations.json")
    assert ds.num_classes == 20  # _background_ (id 0) is not a class
    assert ds.class_names[0] == "aeroplane" and ds.class_names[14] == "person"
    assert ds.ids("val") == ["2011_000003", "2011_000006", "2011_000025"]
    voc = PascalDataset(root / "data_dataset_voc")
    expect = {"2011_000003": {0, 5, 15}, "2011_000006": {0, 9, 15, 18},
              "2011_000025": {0, 6, 7}}
    for image_id, values in expect.items():
        mask = ds.load_mask(image_id)
        assert set(np.unique(mask).tolist()) == values
        assert mask.shape == ds.image_size(image_id) == ds.load_image(image_id).shape[:2]
        ref = voc.load_mask(image_id)  # same polygons rasterised by labelme
        assert ((mask == ref) | (ref == 255)).mean() > 0.98


# ----------------------------------------------------------------------------------------
# PASCAL
# ----------------------------------------------------------------------------------------

def test_pascal_splits(pascal_root, dsfx):
    ds = open_dataset("pascal", pascal_root)
    assert ds.num_classes == 20 and ds.class_names[-1] == "tvmonitor"
    for split, ids in dsfx.PASCAL_SPLITS.items():
        assert ds.ids(split) == ids, split
    assert not set(ds.ids("train")) & set(ds.ids("val"))
    assert not set(ds.ids("aug")) & set(ds.ids("val"))
    assert set(ds.ids("train")) <= set(ds.ids("aug"))
    # the VOCdevkit folder above works too
    assert PascalDataset(pascal_root.parent).ids("train") == dsfx.PASCAL_SPLITS["train"]


def test_pascal_mask_sources(pascal_root):
    ds = PascalDataset(pascal_root)
    voc = ds.load_mask("2007_000002")  # VOC PNG wins over its SBD .mat (class 20)
    assert set(np.unique(voc)) == {0, 2, 255}
    assert voc[9, 20] == 255 and voc[10, 20] == 2 and voc[0, 0] == 0  # 255 border kept
    sbd = ds.load_mask("2008_000001")  # SBD .mat only
    assert ds.mask_path("2008_000001").suffix == ".mat"
    assert sbd.shape == (40, 50) and (sbd[:20] == 10).all() and (sbd[20:] == 0).all()
    aug = ds.load_mask("2008_000002")  # SegmentationClassAug wins over SBD
    assert (aug[:, :25] == 7).all() and (aug[:, 25:] == 0).all()
    assert ds.load_image("2008_000003").shape == (40, 50, 3)
    assert ds.image_size("2008_000003") == (40, 50)
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.load_mask("2008_000001"), sbd)


def test_pascal_without_sbd(pascal_voc_root, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets.pascal"):
        ds = PascalDataset(pascal_voc_root)
    assert ds.ids("train") == ["2007_000001", "2007_000002"]
    assert ds.ids("val") == ["2007_000101", "2007_000102"]
    assert "VOC train only" in caplog.text
    with pytest.raises(DatasetError, match="benchmark.tgz"):
        ds.ids("aug")


def test_pascal_missing_list(pascal_voc_root):
    (pascal_voc_root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="missing ImageSets/Segmentation/val.txt"):
        PascalDataset(pascal_voc_root)


@pytest.mark.realdata
def test_labelme_voc_folder():
    root = needs(LABELME / "semantic_segmentation" / "data_dataset_voc")
    ds = open_dataset("pascal", root)
    assert ds.splits == ("all",)  # no ImageSets/Segmentation
    assert ds.num_classes == 20 and ds.class_names[15] == "potted plant"
    expect = {"2011_000003": {0, 5, 15, 255}, "2011_000006": {0, 9, 15, 18, 255},
              "2011_000025": {0, 6, 7}}
    assert ds.ids("all") == sorted(expect)
    for image_id, values in expect.items():
        mask = ds.load_mask(image_id)
        assert set(np.unique(mask).tolist()) == values
        assert mask.shape == ds.image_size(image_id) == ds.load_image(image_id).shape[:2]
