"""COCO 2017 next to 2014, and any COCO-style json per split (coco-json, dataset.toml):
known answers on exports built in tmp folders, the quirks of real exports, and the bad-input
table of docs/data.md."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import CocoDataset, CocoJsonDataset, open_dataset
from pipeline.datasets.spec import SPEC_NAME, prepare_json_dataset, read_spec
from pipeline.errors import ConfigError, DatasetError, ImageReadError

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
LABELME = SHARED_DATA / "voc_labelme_examples" / "examples"


# ----------------------------------------------------------------------------------------
# COCO 2017 and --year
# ----------------------------------------------------------------------------------------

def test_coco2017_layout_gives_the_2014_answers(coco2017_root, dsfx):
    ds = open_dataset("coco", coco2017_root)
    assert ds.year == 2017 and ds.splits == ("train", "val") and ds.num_classes == 80
    val_id = dsfx.coco_stem(dsfx.COCO_VAL_ID, 2017)
    assert val_id == "000000000042"
    assert ds.image_path(val_id) == coco2017_root / "val2017" / f"{val_id}.jpg"
    assert ds._index == {}  # found by its file, no json parsed
    assert ds.ids("val") == [val_id, dsfx.coco_stem(dsfx.COCO_VAL_EMPTY, 2017)]
    mask = ds.load_mask(val_id)
    for (r, c), label in dsfx.COCO_EXPECT.items():
        assert mask[r, c] == label, (r, c)
    train_id = dsfx.coco_stem(dsfx.COCO_TRAIN_ID, 2017)
    assert set(np.unique(ds.load_mask(train_id))) == {0, 17}
    assert set(ds._index) == {"val2017", "train2017"}


def test_both_years_default_to_2014_and_year_picks(tmp_path, dsfx, caplog):
    root = dsfx.make_coco(tmp_path / "coco", 2014)
    dsfx.make_coco(root, 2017)
    with caplog.at_level(logging.INFO, logger="pipeline.datasets.coco"):
        ds = open_dataset("coco", root)
    assert ds.year == 2014 and "--year 2017" in caplog.text
    assert ds.ids("val")[0] == dsfx.COCO_VAL_ID
    ds17 = open_dataset("coco", root, year=2017)
    assert ds17.ids("val")[0] == "000000000042"
    # either reader resolves the other year's ids (stores made with either can be scored)
    assert np.array_equal(ds.load_mask("000000000042"), ds17.load_mask(dsfx.COCO_VAL_ID))


@pytest.mark.parametrize("kwargs, match", [
    ({"year": 2015}, "--year must be 2014 or 2017"),
    ({"year": 2017}, "no complete COCO 2017 split"),
])
def test_bad_year(coco_root, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        open_dataset("coco", coco_root, **kwargs)


def test_year_is_for_coco_only(folder_root):
    with pytest.raises(ConfigError, match="--year applies to --dataset coco only"):
        open_dataset("folder", folder_root, year=2017)


# ----------------------------------------------------------------------------------------
# coco-json: one json + image folder per split, named by a dataset.toml
# ----------------------------------------------------------------------------------------

def test_coco_json_reader_on_an_export_with_the_quirks(coco_json_root, dsfx, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets.coco"):
        ds = open_dataset("coco-json", coco_json_root)
    assert isinstance(ds, CocoJsonDataset)
    assert ds.class_names == dsfx.CJ_CLASSES and ds.splits == ("train", "val")
    assert ds.ids("train") == [f"t{i}" for i in range(6)]
    assert ds.ids("val") == [f"v{i}" for i in range(6)]
    # annotation 5002 refers to image id 999: left out, named
    assert "annotation 5002 -> image 999" in caplog.text and "annotations.json" in caplog.text
    h, w = dsfx.CJ_HW
    for i in range(6):
        image, mask = ds.load_image(f"v{i}"), ds.load_mask(f"v{i}")
        assert image.shape == (h, w, 3) and image.dtype == np.uint8 and mask.shape == (h, w)
        assert mask[10, 10] == 1 and mask[35, 50] == 3  # mug 1 (id 3), kettle 3 (id 9)
    # grayscale and CMYK JPEGs decode to RGB (grey: three equal channels)
    grey = ds.load_image("v0")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    cmyk = ds.load_image("v1")
    assert abs(cmyk.astype(int).mean() - ds.load_image("t1").astype(int).mean()) < 80
    # two polygons, one object (spoon: id 5 -> label 2); the gap between them is background
    m0 = ds.load_mask("v0")
    assert m0[5, 47] == 2 and m0[5, 57] == 2 and m0[5, 52] == 0
    # crowd RLE is 255 except where the kettle (drawn after) covers it
    m1 = ds.load_mask("v1")
    assert m1[46, 35] == 255 and m1[40, 50] == 3
    # a file in a sub folder; an entry without height / width takes the file's size
    assert ds.image_path("v2") == coco_json_root / "val" / "images" / "sub" / "v2.jpg"
    assert ds.load_mask("v3").shape == (h, w)
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.load_mask("v1"), m1)


def test_any_name_with_a_dataset_toml_is_coco_json(coco_json_root):
    ds = open_dataset("kitchen", coco_json_root)
    assert isinstance(ds, CocoJsonDataset) and ds.name == "kitchen"
    assert ds.num_classes == 3


def test_image_missing_from_the_folder_is_named(coco_json_root, caplog):
    (coco_json_root / "val" / "images" / "v4.jpg").unlink()
    ds = open_dataset("coco-json", coco_json_root)
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets.coco"):
        assert "v4" in ds.ids("val")  # listed: the stages report it as a failure
    assert "1 of the 6 images listed" in caplog.text and "v4.jpg" in caplog.text
    with pytest.raises(ImageReadError, match=r"missing image .*v4\.jpg"):
        ds.load_image("v4")


def test_prepare_json_dataset_writes_the_spec_once(coco_json_root, tmp_path):
    splits = {"train": (str(coco_json_root / "train" / "annotations.json"),
                        str(coco_json_root / "train" / "images")),
              "val": (str(coco_json_root / "val" / "annotations.json"),
                      str(coco_json_root / "val" / "images"))}
    folder = prepare_json_dataset("kitchen", cache_dir=tmp_path, splits=splits)
    assert folder == tmp_path / "kitchen" / "data"
    spec = read_spec(folder)
    assert spec["splits"]["val"][1] == (coco_json_root / "val" / "images").resolve()
    assert prepare_json_dataset("kitchen", cache_dir=tmp_path, splits=splits) == folder
    ds = open_dataset("kitchen", cache_dir=tmp_path)  # later stages: the name is enough
    assert ds.ids("val")[0] == "v0"
    other = dict(splits, val=(splits["train"][0], splits["train"][1]))
    with pytest.raises(ConfigError, match="already describes dataset 'kitchen' with other files"):
        prepare_json_dataset("kitchen", cache_dir=tmp_path, splits=other)


@pytest.mark.realdata
def test_labelme_json_through_a_dataset_toml(tmp_path):
    """The labelme export (real photos, polygons, category 0 = _background_) as a one-split
    coco-json dataset: the same masks as its VOC export."""
    coco = LABELME / "instance_segmentation" / "data_dataset_coco"
    if not coco.is_dir():
        pytest.skip(f"real data not found at {coco} (see ../shared/data)")
    root = tmp_path / "labelme"
    root.mkdir()
    (root / SPEC_NAME).write_text(f'format = "coco-json"\n[splits.val]\n'
                                  f'json = "{coco / "annotations.json"}"\n')
    ds = open_dataset("labelme", root)
    assert ds.num_classes == 20 and ds.class_names[14] == "person"
    assert ds.ids("val") == ["2011_000003", "2011_000006", "2011_000025"]
    voc = open_dataset("pascal", LABELME / "instance_segmentation" / "data_dataset_voc")
    for image_id in ds.ids("val"):
        ours, theirs = ds.load_mask(image_id), voc.load_mask(image_id)
        assert set(np.unique(ours)) - {255} == set(np.unique(theirs)) - {255}
        agree = (ours == theirs)[(theirs != 255)].mean()
        assert agree > 0.97, (image_id, agree)


# ----------------------------------------------------------------------------------------
# the bad-input table (docs/data.md, "COCO and COCO-style json: bad inputs")
# ----------------------------------------------------------------------------------------

def _edit_json(root: Path, split: str, fn) -> None:
    path = root / split / "annotations.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _set(data, key, value):
    data[key] = value


BAD_JSON = [
    ("no dataset.toml", lambda r: (r / SPEC_NAME).unlink(), DatasetError,
     r"no dataset\.toml; write one"),
    ("dataset.toml not TOML", lambda r: (r / SPEC_NAME).write_text("format = "), DatasetError,
     r"dataset\.toml is not valid TOML"),
    ("unknown format", lambda r: (r / SPEC_NAME).write_text('format = "yolo"\n'),
     DatasetError, r"format = 'yolo'; known formats: coco-json"),
    ("split without json", lambda r: (r / SPEC_NAME).write_text(
        'format = "coco-json"\n[splits.val]\nimages = "val/images"\n'), DatasetError,
     r"\[splits\.val\] needs json ="),
    ("json path does not exist", lambda r: (r / "val" / "annotations.json").unlink(),
     DatasetError, r"\[splits\.val\] json .*annotations\.json does not exist"),
    ("json is not JSON", lambda r: (r / "train" / "annotations.json").write_text("{"),
     DatasetError, r"cannot parse .*train/annotations\.json"),
    ("json without annotations", lambda r: _edit_json(r, "train", lambda d: d.pop("annotations")),
     DatasetError, r"train/annotations\.json has no 'annotations' list"),
    ("annotation of an unknown category", lambda r: _edit_json(
        r, "train", lambda d: _set(d["annotations"][0], "category_id", 4)), DatasetError,
     r"annotation 1000 has category id 4, which is not in the categories list"),
    ("annotation with category 0", lambda r: _edit_json(
        r, "train", lambda d: _set(d["annotations"][0], "category_id", 0)), DatasetError,
     r"use category id 0 \(background\)"),
    ("two images, one stem", lambda r: _edit_json(
        r, "train", lambda d: _set(d["images"][1], "file_name", "x/t0.jpg")), DatasetError,
     r"images t0\.jpg and x/t0\.jpg have the same file stem 't0'"),
    ("box-only annotation", lambda r: _edit_json(
        r, "train", lambda d: d["annotations"][0].pop("segmentation")), DatasetError,
     r"annotation 1000 of image 100 has no 'segmentation'"),
]


@pytest.mark.parametrize("what, edit, exc, match", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_coco_json_inputs(coco_json_root, what, edit, exc, match):
    edit(coco_json_root)
    with pytest.raises(exc, match=match):
        open_dataset("coco-json", coco_json_root).ids("train")


def test_categories_that_differ_between_splits_name_both_files(coco_json_root):
    _edit_json(coco_json_root, "val", lambda d: _set(d["categories"][1], "name", "cup"))
    ds = open_dataset("coco-json", coco_json_root)
    with pytest.raises(DatasetError, match=r"val/annotations\.json and .*train/annotations\.json "
                                           r"list different categories"):
        ds.ids("val")


def test_wrong_image_folder_is_refused(coco_json_root):
    (coco_json_root / SPEC_NAME).write_text(
        'format = "coco-json"\n[splits.val]\njson = "val/annotations.json"\nimages = "train"\n')
    with pytest.raises(DatasetError, match=r"none of the 6 images listed in .*val/annotations"
                                           r"\.json is in .*train \(first expected"):
        open_dataset("coco-json", coco_json_root).ids("val")


def test_size_in_json_that_differs_from_the_file_names_it(coco_json_root):
    _edit_json(coco_json_root, "val", lambda d: _set(d["images"][4], "height", 40))
    ds = open_dataset("coco-json", coco_json_root)
    with pytest.raises(ImageReadError, match=r"v4: the json says 40x64 .*v4\.jpg is 48x64"):
        ds.load_mask("v4")


def test_rle_of_another_size_names_the_annotation(coco_json_root, dsfx):
    bad = dsfx.uncompressed_rle(np.ones((5, 5), np.uint8))
    _edit_json(coco_json_root, "val", lambda d: d["annotations"].append(
        {"id": 7777, "image_id": 105, "category_id": 3, "iscrowd": 1, "segmentation": bad}))
    ds = open_dataset("coco-json", coco_json_root)
    with pytest.raises(ImageReadError, match=r"annotation 7777 of v5 cannot be decoded"):
        ds.load_mask("v5")


def test_truncated_jpeg_in_an_export_is_named(coco_json_root):
    path = coco_json_root / "val" / "images" / "v5.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"cannot read image .*v5\.jpg"):
        open_dataset("coco-json", coco_json_root).load_image("v5")


def test_from_json_still_opens_one_json(coco_json_root):
    ds = CocoDataset.from_json(coco_json_root / "val" / "annotations.json",
                               coco_json_root / "val" / "images")
    assert ds.class_names == ("mug", "spoon", "kettle") and ds.splits == ("val",)
    img = Image.open(ds.image_path("v1"))
    assert img.mode == "CMYK"


@pytest.mark.realdata
def test_labelme_export_in_folder_layout_reads_as_its_voc_export(tmp_path):
    """The folder reader on the same real photos: labelme's VOC export laid out as
    images/, masks/ (its palette PNGs) and classes.txt (with labelme's leading _background_)."""
    import os

    voc_root = LABELME / "semantic_segmentation" / "data_dataset_voc"
    if not voc_root.is_dir():
        pytest.skip(f"real data not found at {voc_root} (see ../shared/data)")
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for p in (voc_root / "JPEGImages").glob("*.jpg"):
        os.symlink(p.resolve(), root / "images" / p.name)
    for p in (voc_root / "SegmentationClass").glob("*.png"):
        os.symlink(p.resolve(), root / "masks" / p.name)
    (root / "classes.txt").write_text((voc_root / "class_names.txt").read_text())
    ds = open_dataset("labelme-folder", root)
    voc = open_dataset("pascal", voc_root)
    assert ds.class_names == voc.class_names and ds.ids("all") == voc.ids("all")
    for image_id in ds.ids("all"):
        assert np.array_equal(ds.load_mask(image_id), voc.load_mask(image_id))
        assert np.array_equal(ds.load_image(image_id), voc.load_image(image_id))
