"""FSS-1000 (HSNet's split) and PATNet's Deepglobe, ISIC and Chest X-ray: the native layouts
built in tmp folders with their quirks, the masks as the references threshold them, and the
episodes compared with a re-enactment of the references' own sampling loops on the files."""
from __future__ import annotations

import glob
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import DATASETS, open_dataset
from pipeline.datasets import fss1000_split as split_lists
from pipeline.datasets.imageclass import MAX_SIDE
from pipeline.episodes import numeric_name_rank, reference_episodes
from pipeline.errors import DatasetError, ImageReadError

# ----------------------------------------------------------------------------------------
# the references' sampling, re-enacted on file paths (HSNet data/fss.py, PATNet data/*.py)
# ----------------------------------------------------------------------------------------

def _global_numpy(seed):
    """The references seed numpy's global state (utils.fix_randseed) and call np.random."""
    state = np.random.get_state()
    np.random.seed(seed)
    return state


def hsnet_fss_episodes(base: str, categories, shot: int, seed: int = 0):
    """HSNet's DatasetFSS for the test split: its img_metadata and sample_episode, verbatim in
    logic (paths in, paths out)."""
    img_metadata = []
    for cat in sorted(categories):
        for p in sorted(glob.glob("%s/*" % os.path.join(base, cat))):
            if os.path.basename(p).split(".")[1] == "jpg":
                img_metadata.append(p)
    state = _global_numpy(seed)
    try:
        out = []
        for query_name in img_metadata:
            supports = []
            while True:
                n = np.random.choice(range(1, 11), 1, replace=False)[0]
                s = os.path.join(os.path.dirname(query_name), str(n)) + ".jpg"
                if query_name != s:
                    supports.append(s)
                if len(supports) == shot:
                    break
            out.append((query_name, supports))
    finally:
        np.random.set_state(state)
    return out


def patnet_episodes(classwise: dict, shot: int, n: int = 600, seed: int = 0):
    """PATNet's sample_episode (Deepglobe, ISIC, Lung): class idx % C, query and supports by
    np.random.choice over the class's sorted file list."""
    cats = list(classwise)
    state = _global_numpy(seed)
    try:
        out = []
        for idx in range(n):
            cat = cats[idx % len(cats)]
            q = np.random.choice(classwise[cat], 1, replace=False)[0]
            supports = []
            while True:
                s = np.random.choice(classwise[cat], 1, replace=False)[0]
                if q != s:
                    supports.append(s)
                if len(supports) == shot:
                    break
            out.append((q, supports))
    finally:
        np.random.set_state(state)
    return out


def _listing(folder: str, ext: str) -> list[str]:
    return [p for p in sorted(glob.glob("%s/*" % folder))
            if os.path.basename(p).split(".")[1] == ext]


def ours(ds, split, *, rule, shot, n=None, key=lambda ds, i: str(ds.image_path(i))):
    """Our episodes through the reader's ids and image classes, as ``key`` strings."""
    ids = ds.ids(split)
    ic = np.array([ds.image_class(i) for i in ids])
    test = sorted(set(ic.tolist()))
    ep = reference_episodes(ic, test, shot=shot, seed=0, rule=rule, n_episodes=n,
                            pool_rank=numeric_name_rank(ids) if rule == "fss" else None)
    return [(key(ds, ids[q]), [key(ds, ids[s]) for s in sup])
            for q, sup in zip(ep["query"], ep["support"], strict=True)]


# ----------------------------------------------------------------------------------------
# FSS-1000
# ----------------------------------------------------------------------------------------

def test_split_lists_are_hsnets():
    assert len(split_lists.TRAIN) == 520 and len(split_lists.VAL) == 240
    assert len(split_lists.TEST) == 240
    for names in (split_lists.TRAIN, split_lists.VAL, split_lists.TEST):
        assert list(names) == sorted(names)  # HSNet sorts each list
    every = split_lists.TRAIN + split_lists.VAL + split_lists.TEST
    assert len(set(every)) == 1000
    assert "abe's_flyingfish" in split_lists.TEST and "thor's_hammer" in split_lists.VAL
    ds_names = DATASETS["fss1000"].class_names
    assert ds_names[760] == split_lists.TEST[0]  # HSNet class_id 760 -> our 761


def test_fss1000_reader_native_layout(fss_root, dsfx):
    ds = open_dataset("fss1000", fss_root)  # the datapath holding FSS-1000/, as HSNet takes it
    assert ds.num_classes == 1000 and ds.splits == ("train", "val", "test")
    ids = ds.ids("test")
    first = split_lists.TEST[0]
    assert first == "abe's_flyingfish"
    # HSNet's order: classes sorted, files by name (1, 10, 2, ...); 4.x.jpg and notes.txt skipped
    assert ids[:4] == [f"{first}/1", f"{first}/10", f"{first}/2", f"{first}/3"]
    assert len(ids) == 2400 and f"{first}/4" in ids and not any(".x" in i for i in ids)
    assert ds.image_class(ids[0]) == 761 and ds.image_class(ids[-1]) == 1000
    img, mask = ds.load_image(ids[0]), ds.load_mask(ids[0])
    assert img.shape == (dsfx.FSS_SIDE, dsfx.FSS_SIDE, 3) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    # a mask of another size is resized to its image (nearest), as HSNet's 400 x 400 resize does
    big = ds.load_mask(f"{first}/3")
    assert big.shape == (dsfx.FSS_SIDE, dsfx.FSS_SIDE)
    assert np.array_equal(big, dsfx.object_box(dsfx.FSS_SIDE, dsfx.FSS_SIDE, 0 + 3))
    # 0/1 masks are read as they are (HSNet's >= 128 would make them empty); RGB 0/255 too
    for name in (dsfx.FSS_01, dsfx.FSS_RGB):
        ci = split_lists.TEST.index(name)
        m = ds.load_mask(f"{name}/2")
        assert np.array_equal(m, dsfx.object_box(dsfx.FSS_SIDE, dsfx.FSS_SIDE, ci + 2)), name
    # the folder written with a space is found
    assert ds.image_path(f"{dsfx.FSS_SPACED}/1").parent.name == "american alligator"
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.load_mask(ids[5]), ds.load_mask(ids[5]))


def test_fss1000_missing_split_folders_and_bad_root(fss_root, tmp_path):
    ds = open_dataset("fss1000", fss_root)
    with pytest.raises(DatasetError, match=r"520 of the 520 train class folders are missing "
                                           r"\(first: ac_wall"):
        ds.ids("train")
    with pytest.raises(DatasetError, match="no folder named after an FSS-1000 class.*"
                                           "github.com/HKUSTCV/FSS-1000"):
        open_dataset("fss1000", tmp_path)


@pytest.mark.parametrize("shot", [1, 5])
def test_fss1000_episodes_are_hsnets(fss_root, shot):
    ds = open_dataset("fss1000", fss_root)
    base = str(ds.data_dir)
    folders = [os.path.basename(str(ds.image_path(f"{n}/1").parent)) for n in split_lists.TEST]
    theirs = hsnet_fss_episodes(base, folders, shot)
    mine = ours(ds, "test", rule="fss", shot=shot)
    assert len(mine) == len(theirs) == 2400
    assert mine == theirs
    if shot == 5:  # HSNet draws supports with replacement: some episodes repeat one
        assert any(len(set(s)) < 5 for _, s in mine)


# ----------------------------------------------------------------------------------------
# Deepglobe, ISIC, Chest X-ray (PATNet's layouts)
# ----------------------------------------------------------------------------------------

def test_deepglobe_reader(deepglobe_root, dsfx):
    ds = open_dataset("deepglobe", deepglobe_root)
    assert ds.splits == ("test",) and ds.class_names[0] == "agriculture_land"
    ids = ds.ids("test")
    assert len(ids) == 19 and ids[0] == f"1/{dsfx.DG_SHARED}"
    assert f"3/{dsfx.DG_SHARED}" in ids  # the same tile in two folders: two ids
    a, b = ds.load_mask(f"1/{dsfx.DG_SHARED}"), ds.load_mask(f"3/{dsfx.DG_SHARED}")
    assert not np.array_equal(a, b) and set(np.unique(a)) == {0, 1}  # each folder's mask
    assert ds.image_class(f"3/{dsfx.DG_SHARED}") == 3


@pytest.mark.parametrize("shot", [1, 5])
def test_deepglobe_episodes_are_patnets(deepglobe_root, shot):
    ds = open_dataset("deepglobe", deepglobe_root)
    base = deepglobe_root / "Deepglobe"
    classwise = {str(k): _listing(str(base / str(k) / "test" / "origin"), "jpg")
                 for k in range(1, 7)}
    assert ours(ds, "test", rule="patnet", shot=shot) == patnet_episodes(classwise, shot)


def test_isic_folders_named_from_class_id_csv(isic_root):
    ds = open_dataset("isic", isic_root)
    assert ds.class_names == ("nevus", "seborrheic_keratosis", "melanoma")
    ids = ds.ids("test")
    assert ids[:3] == ["1/ISIC_0000000", "1/ISIC_0000001", "1/ISIC_0000003"]
    assert ds.mask_path(ids[0]).name == "ISIC_0000000_segmentation.png"
    with pytest.raises(ImageReadError, match=r"missing mask .*ISIC_0000099_segmentation\.png "
                                             r"for image"):
        ds.load_mask("3/ISIC_0000099")
    base = isic_root / "ISIC"
    classwise = {k: _listing(str(base / "ISIC2018_Task1-2_Training_Input" / k), "jpg")
                 for k in ("1", "2", "3")}
    assert ours(ds, "test", rule="patnet", shot=5) == patnet_episodes(classwise, 5)


def test_isic_flat_layout(tmp_path, dsfx):
    root = dsfx.make_isic(tmp_path / "flat", folders=False)
    ds = open_dataset("isic", root)
    assert ds.class_names == ("nevus", "melanoma", "seborrheic_keratosis")
    assert [i for i in ds.ids("test") if i.startswith("3/")] == ["3/ISIC_0000030",
                                                                  "3/ISIC_0000031"]
    root2 = dsfx.make_isic(tmp_path / "nocsv", folders=False, csv=False)
    with pytest.raises(DatasetError, match="no class folders 1/, 2/, 3/ and there is no "
                                           "class_id.csv"):
        open_dataset("isic", root2)


def test_isic_without_csv_keeps_folder_numbers(tmp_path, dsfx):
    root = dsfx.make_isic(tmp_path / "d", csv=False)
    assert open_dataset("isic", root).class_names == ("1", "2", "3")


def test_chest_reader_leaves_out_montgomery(chest_root, dsfx, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.datasets.crossdomain"):
        ds = open_dataset("chest", chest_root)
    assert "2 mask(s) without the _mask suffix" in caplog.text
    assert ds.ids("test") == list(dsfx.CHEST_IDS) and ds.class_names == ("lung",)
    img = ds.load_image("CHNCXR_0003_1")
    assert img.shape == (20, 16, 3) and (img[..., 0] == img[..., 2]).all()  # grey -> RGB
    base = chest_root / "LungSegmentation"
    kept = [p for p in _listing(str(base / "masks"), "png") if p.endswith("_mask.png")]
    mine = ours(ds, "test", rule="patnet", shot=1, key=lambda d, i: str(d.mask_path(i)))
    assert mine == patnet_episodes({"1": kept}, 1)


@pytest.mark.parametrize("name, fixture, what, match", [
    ("deepglobe", None, "empty", r"no class folder k/test/origin/.*PATNet"),
    ("isic", None, "empty", r"no ISIC2018_Task1-2_Training_Input/ folder.*isic-archive"),
    ("chest", None, "empty", r"no masks/ folder.*kaggle"),
    ("chest", "chest_root", "no images", r"no CXR_png/ folder beside"),
    ("isic", "isic_root", "no masks", r"no ISIC2018_Task1_Training_GroundTruth/ folder"),
    ("deepglobe", "deepglobe_root", "empty class", r"class folder .*/4/test/origin holds no "
                                                   r"\.jpg image"),
])
def test_cross_domain_bad_roots(request, tmp_path, name, fixture, what, match):
    import shutil

    root = request.getfixturevalue(fixture) if fixture else tmp_path
    if what == "no images":
        shutil.rmtree(root / "LungSegmentation" / "CXR_png")
    if what == "no masks":
        shutil.rmtree(root / "ISIC" / "ISIC2018_Task1_Training_GroundTruth")
    if what == "empty class":
        for p in (root / "Deepglobe" / "4" / "test" / "origin").iterdir():
            p.unlink()
    with pytest.raises(DatasetError, match=match):
        open_dataset(name, root)


def test_images_above_the_store_limit_are_scaled_down(tmp_path, dsfx):
    """ISIC holds photos up to 6,748 px wide; the stores keep at most MAX_SIDE a side."""
    root = tmp_path / "d"
    base = root / "LungSegmentation"
    (base / "CXR_png").mkdir(parents=True)
    h, w = 10, MAX_SIDE + 904
    Image.fromarray(np.full((h, w), 7, np.uint8)).save(base / "CXR_png" / "CHNCXR_0001_0.png")
    obj = np.zeros((h, w), bool)
    obj[:, : w // 2] = True
    dsfx.write_object_png(base / "masks" / "CHNCXR_0001_0_mask.png", obj)
    ds = open_dataset("chest", root)
    hw = ds.image_size("CHNCXR_0001_0")
    assert hw == (8, MAX_SIDE)
    assert ds.load_image("CHNCXR_0001_0").shape == hw + (3,)
    m = ds.load_mask("CHNCXR_0001_0")
    assert m.shape == hw and m[:, : MAX_SIDE // 2 - 2].all() and not m[:, MAX_SIDE // 2 + 2:].any()


def test_the_store_limit_is_the_stores():
    from pipeline.store import MAX_MAP_SIDE

    assert MAX_SIDE == MAX_MAP_SIDE
