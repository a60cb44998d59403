"""Fold splits, training lists and fixed test episodes: known answers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import episode_stage as es
from pipeline import episodes as ep
from pipeline.cache import episodes_dir, mask_store_path
from pipeline.datasets.coco import COCO_CATEGORIES
from pipeline.datasets.pascal import VOC_CLASSES
from pipeline.store import ShardedStore, StoreError

CAMVID = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camvid"
CAMVID_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                "Car", "Pedestrian", "Bicyclist"]
# Class names by label id (label c is index c - 1), from the readers that define the labels.
COCO_CLASSES = tuple(name for _, name in COCO_CATEGORIES)  # person = 1 ... toothbrush = 80


# ------------------------------------------------------------------------------ helpers
def make_mask_store(cache, dataset, split, class_pixels, names, *, ids=None, root=None):
    """A mask store holding only class_pixels (the masks themselves are blank 4x4 maps)."""
    cp = np.asarray(class_pixels, dtype=np.int64)
    n, c1 = cp.shape
    ids = ids if ids is not None else [f"{split}_{i:05d}" for i in range(n)]
    store = ShardedStore.create(
        mask_store_path(dataset, split, cache_dir=cache), ids=ids, hw=np.full((n, 2), 4),
        maps="masks", dtype="uint8", extras={"class_pixels": ((c1,), "int64")}, shard_size=256,
        attrs={"kind": "masks", "dataset": dataset, "split": split, "class_names": list(names),
               "num_classes": c1 - 1, "root": str(root or cache)}, overwrite=True)
    for k in range(store.n_shards):
        a, b = store.shard_range(k)
        store.write_shard(k, [np.zeros((4, 4), np.uint8)] * (b - a),
                          extras={"class_pixels": cp[a:b]})
    return store


def random_table(n, c, *, seed=0, per_image=3):
    """class_pixels of n images with about ``per_image`` classes each, sizes 1..20,000 px."""
    rng = np.random.default_rng(seed)
    cp = np.zeros((n, c + 1), dtype=np.int64)
    for i in range(n):
        k = rng.integers(1, per_image * 2)
        cls = rng.choice(np.arange(1, c + 1), size=min(k, c), replace=False)
        cp[i, cls] = rng.integers(1, 20000, size=len(cls))
    cp[:, 0] = 100000 - cp[:, 1:].sum(1)
    return cp


# ------------------------------------------------------------------------------ folds
FOLD0_COCO = ["person", "airplane", "boat", "parking meter", "dog", "elephant", "backpack",
              "suitcase", "sports ball", "skateboard", "wine glass", "spoon", "sandwich",
              "hot dog", "chair", "dining table", "mouse", "microwave", "refrigerator",
              "scissors"]


@pytest.mark.parametrize("fold", range(4))
def test_coco_interleaved_and_contiguous_folds(fold):
    test, train = ep.fold_classes("coco", 80, fold)
    assert test.tolist() == list(range(fold + 1, 81, 4))  # PFENet use_split_coco: range(f+1, .., 4)
    assert len(test) == 20 and len(train) == 60
    assert sorted(test.tolist() + train.tolist()) == list(range(1, 81))
    test_c, train_c = ep.fold_classes("coco", 80, fold, coco_split="contiguous")
    assert test_c.tolist() == list(range(20 * fold + 1, 20 * fold + 21))
    assert not set(test_c) & set(train_c) and len(train_c) == 60


def test_coco_fold0_by_name():
    assert len(COCO_CLASSES) == 80 and COCO_CLASSES[-1] == "toothbrush"
    test, _ = ep.fold_classes("coco", 80, 0)
    assert [COCO_CLASSES[c - 1] for c in test] == FOLD0_COCO


def test_pascal_folds_by_name():
    names = {f: [VOC_CLASSES[c - 1] for c in ep.fold_classes("pascal", 20, f)[0]]
             for f in range(4)}
    assert names[0] == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert names[1] == ["bus", "car", "cat", "chair", "cow"]
    assert names[2] == ["diningtable", "dog", "horse", "motorbike", "person"]
    assert names[3] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert ep.fold_classes("pascal", 20, 2)[1].tolist() == list(range(1, 11)) + list(range(16, 21))


def test_fold_validation():
    with pytest.raises(ValueError, match="folds are 0..3"):
        ep.fold_classes("pascal", 20, 4)
    with pytest.raises(ValueError, match="20 classes"):
        ep.fold_classes("pascal", 21, 0)
    with pytest.raises(ValueError, match="coco_split"):
        ep.fold_classes("coco", 80, 0, coco_split="random")


def test_folder_interleaved_default():
    got = {f: ep.fold_classes("folder", 11, f)[0].tolist() for f in range(4)}
    assert got == {0: [1, 5, 9], 1: [2, 6, 10], 2: [3, 7, 11], 3: [4, 8]}


def test_folds_file_ids_names_and_validation(tmp_path):
    names = ["cat", "dog", "parking meter", "cow", "bird"]
    f = tmp_path / "folds.txt"
    f.write_text("# my folds\n1 4\n\nparking meter, dog\n")
    assert ep.num_folds(folds_file=f) == 2
    assert ep.fold_classes("folder", 5, 0, folds_file=f, class_names=names)[0].tolist() == [1, 4]
    test, train = ep.fold_classes("folder", 5, 1, folds_file=f, class_names=names)
    assert test.tolist() == [2, 3] and train.tolist() == [1, 4, 5]
    with pytest.raises(ValueError, match="folds are 0..1"):
        ep.fold_classes("folder", 5, 2, folds_file=f, class_names=names)
    bad = {"1 9\n": "outside 1..5", "cat horse\n": "unknown class 'horse'",
           "1 2\n2 3\n": "disjoint", "1 1\n": "twice", "# nothing\n": "no fold",
           "1 2 3 4 5\n": "none is left"}
    for text, msg in bad.items():
        f.write_text(text)
        with pytest.raises(ValueError, match=msg):
            ep.parse_folds_file(f, names)


# ------------------------------------------------------------------------------ training lists
def test_training_list_pixel_rule_and_novel_images():
    # classes: 1, 2 train; 3 test
    cp = np.array([[0, 2047, 0, 0],      # 2047 px: not listed
                   [0, 2048, 0, 0],      # 2048 px: listed
                   [0, 5000, 3000, 9000],  # train + test class: kept by default, dropped by BAM
                   [0, 0, 0, 9000],      # only a test class: never listed
                   [0, 4000, 10, 1],     # one test pixel: dropped by BAM (any pixel)
                   [0, 100, 0, 0]])
    tl = ep.training_list(cp, [1, 2], test_classes=[3])
    assert tl["image_index"].tolist() == [1, 2, 4]
    rows = [tl["classes"][a:b].tolist() for a, b in zip(tl["classes_indptr"][:-1],
                                                        tl["classes_indptr"][1:], strict=True)]
    assert rows == [[1], [1, 2], [1]]  # test class 3 never listed; class 2 in image 4 is 10 px
    present = [tl["present_classes"][a:b].tolist() for a, b in zip(tl["present_indptr"][:-1],
                                                                    tl["present_indptr"][1:], strict=True)]
    assert present == [[1], [1, 2], [1, 2]]
    ci = tl["class_indptr"]
    assert tl["class_images"][ci[1]:ci[2]].tolist() == [1, 2, 4]
    assert tl["class_images"][ci[2]:ci[3]].tolist() == [2]
    assert ci[3] == ci[4]  # the test class has no list
    bam = ep.training_list(cp, [1, 2], test_classes=[3], drop_novel_images=True)
    assert bam["image_index"].tolist() == [1]


def test_training_list_min_pixels_option():
    cp = np.array([[0, 100, 0], [0, 99, 0]])
    assert ep.training_list(cp, [1], min_pixels=100)["image_index"].tolist() == [0]


def test_disjoint_train_val():
    ep.check_disjoint(["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"share 1 image\(s\) \(b\)"):
        ep.check_disjoint(["a", "b"], ["b", "c"])


# ------------------------------------------------------------------------------ episodes
def check_episodes(cp, out, test, shot, min_pixels=2048):
    q, s, c = out["query"], out["support"], out["cls"]
    assert s.shape == (len(q), shot)
    assert set(np.unique(c)) <= set(test)
    assert (s != q[:, None]).all()
    assert all(len(set(row)) == shot for row in s.tolist())
    assert (cp[s, c[:, None]] >= min_pixels).all()  # every support holds the class
    assert (cp[q, c] > 0).all()  # the query holds it (PFENet: any pixel)
    assert (cp[q][:, test] >= min_pixels).any(axis=1).all()  # queries hold a usable test class


@pytest.mark.parametrize("protocol,mode", [("pfenet", None), ("hsnet", None),
                                           ("hsnet", "class")])
def test_episodes_invariants_and_determinism(protocol, mode):
    cp = random_table(400, 12, seed=1)
    test, _ = ep.fold_classes("folder", 12, 1)
    kw = dict(n_episodes=500, protocol=protocol, query_mode=mode)
    a = ep.sample_episodes(cp, test, shot=5, seed=321, **kw)
    b = ep.sample_episodes(cp, test, shot=5, seed=321, **kw)
    for key in ("query", "support", "cls"):
        np.testing.assert_array_equal(a[key], b[key])
    check_episodes(cp, a, test.tolist(), 5)
    if protocol == "hsnet":  # HSNet queries are usable pairs
        assert (cp[a["query"], a["cls"]] >= 2048).all()
    other = ep.sample_episodes(cp, test, shot=5, seed=322, **kw)
    assert not np.array_equal(a["support"], other["support"])
    one = ep.sample_episodes(cp, test, shot=1, seed=321, **kw)
    check_episodes(cp, one, test.tolist(), 1)
    # same seed: the 1-shot episodes are the 5-shot ones cut to their first support
    np.testing.assert_array_equal(one["query"], a["query"])
    np.testing.assert_array_equal(one["support"][:, 0], a["support"][:, 0])


def test_pfenet_walk_known_answer():
    # test classes 1, 2; image 1 has no usable test class (skipped by the walk); image 3
    # holds class 2 with 10 px: PFENet may still pick class 2 there (any pixel present)
    cp = np.zeros((6, 4), dtype=np.int64)
    cp[[0, 2, 4, 5], 1] = 5000
    cp[1, 2], cp[1, 3] = 100, 9000
    cp[3, 1], cp[3, 2] = 3000, 10
    cp[[0, 2, 4], 2] = 4000
    out = ep.sample_episodes(cp, [1, 2], shot=1, n_episodes=400, seed=5)
    assert out["n_queries"] == 5
    assert out["query"][:10].tolist() == [0, 2, 3, 4, 5, 0, 2, 3, 4, 5]
    picked_at_3 = set(out["cls"][out["query"] == 3].tolist())
    assert picked_at_3 == {1, 2}
    assert set(out["cls"][out["query"] == 5].tolist()) == {1}
    check_episodes(cp, out, [1, 2], 1)


def test_supports_are_the_rest_of_a_minimal_class():
    # class 1 in exactly K+1 = 6 images: the 5 supports are the other five, in some order
    cp = np.zeros((9, 2), dtype=np.int64)
    members = [0, 2, 3, 5, 7, 8]
    cp[members, 1] = 3000
    out = ep.sample_episodes(cp, [1], shot=5, n_episodes=60, seed=0)
    for q, s in zip(out["query"], out["support"], strict=True):
        assert sorted(s.tolist()) == sorted(set(members) - {int(q)})
    orders = {tuple(s) for s in out["support"].tolist()}
    assert len(orders) > 20  # the order is random


def test_supports_are_uniform():
    cp = np.zeros((7, 2), dtype=np.int64)
    cp[:, 1] = 3000
    out = ep.sample_episodes(cp, [1], shot=2, n_episodes=7000, seed=1)
    mask = out["query"] == 3
    counts = np.bincount(out["support"][mask].ravel(), minlength=7)
    assert counts[3] == 0
    others = np.delete(counts, 3)
    expect = mask.sum() * 2 / 6
    assert np.all(np.abs(others - expect) < 5 * np.sqrt(expect))


def test_hsnet_pairs_order():
    cp = np.zeros((5, 4), dtype=np.int64)
    cp[:, 1] = 3000
    cp[[1, 3, 4], 2] = 3000
    cp[2, 3] = 3000  # class 3 is not a test class here
    out = ep.sample_episodes(cp, [1, 2], shot=1, n_episodes=9, seed=0, protocol="hsnet")
    pairs = [(0, 1), (1, 1), (1, 2), (2, 1), (3, 1), (3, 2), (4, 1), (4, 2)]
    got = list(zip(out["query"].tolist(), out["cls"].tolist(), strict=True))
    assert got == pairs + pairs[:1]


def test_too_few_images_is_skipped_with_a_warning():
    cp = np.zeros((10, 3), dtype=np.int64)
    cp[:, 1] = 3000
    cp[[0, 1, 2], 2] = 3000  # class 2: 3 images, enough for 1-shot, not 5-shot
    with pytest.warns(ep.EpisodeWarning, match=r"2 \(3 image\(s\)\)"):
        out = ep.sample_episodes(cp, [1, 2], shot=5, n_episodes=50, seed=0)
    assert out["skipped_classes"].tolist() == [2]
    assert set(out["cls"].tolist()) == {1}
    out1 = ep.sample_episodes(cp, [1, 2], shot=1, n_episodes=50, seed=0)
    assert out1["skipped_classes"].tolist() == [] and set(out1["cls"].tolist()) == {1, 2}
    with pytest.raises(ValueError, match="no 5-shot episode"), pytest.warns(ep.EpisodeWarning):
        ep.sample_episodes(cp, [2], shot=5, n_episodes=5, seed=0)


def test_episode_stats():
    st = ep.episode_stats(np.array([0, 1, 0]), np.array([[2], [2], [3]]), np.array([1, 1, 2]))
    assert st["episodes_per_class"] == {1: 2, 2: 1}
    assert st["distinct_queries"] == 2 and st["distinct_supports"] == 2
    assert st["support_uses_max"] == 2


# ------------------------------------------------------------------------------ files
@pytest.fixture
def toy_stores(tmp_path):
    names = [f"c{k}" for k in range(1, 9)]
    make_mask_store(tmp_path, "toy", "train", random_table(300, 8, seed=2), names)
    make_mask_store(tmp_path, "toy", "val", random_table(120, 8, seed=3), names)
    return tmp_path


def test_build_and_load_round_trip(toy_stores):
    cache = toy_stores
    lines = []
    summary = es.build_episodes("toy", cache_dir=cache, seeds=[321, 7], n_episodes=200,
                                echo=lines.append)
    text = "\n".join(lines)
    assert "fold 0: test c1, c5" in text and "(image, class) pairs" in text
    out = episodes_dir("toy", cache_dir=cache)
    info = json.loads((out / "folds.json").read_text())
    assert info["split_kind"] == "interleaved" and info["folds"][0]["test_names"] == ["c1", "c5"]
    assert set(info["stores"]) == {"train", "val"} and info["min_pixels"] == 2048
    assert len(list(out.glob("test-*.npz"))) == 4 * 2 * 2
    tl = es.load_training_list("toy", 0, cache_dir=cache)
    assert tl["test_classes"].tolist() == [1, 5] and tl["fold"] == 0
    assert len(tl["image_index"]) == summary["train"][0]["images"]
    te = es.load_test_episodes("toy", 2, 5, seed=7, cache_dir=cache)
    assert te["support"].shape == (200, 5) and te["seed"] == 7 and te["protocol"] == "pfenet"
    val_cp = ShardedStore.open(mask_store_path("toy", "val", cache_dir=cache)).extra("class_pixels")
    check_episodes(val_cp, te, [3, 7], 5)
    assert "episodes per class" in es.describe(out / "test-fold2-shot5-pfenet-seed7.npz")
    assert "images per training class" in es.describe(out / "train-fold0.npz")
    assert "fold 3: test [4, 8]" in es.describe(out)


def test_loaders_name_the_command(toy_stores):
    cache = toy_stores
    with pytest.raises(FileNotFoundError, match="qgnet-prep episodes --dataset toy --fold 1 "
                                                "--shot 5 --seed 0 --protocol hsnet"):
        es.load_test_episodes("toy", 1, 5, seed=0, protocol="hsnet", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="--drop-novel-images"):
        es.load_training_list("toy", 0, cache_dir=cache, drop_novel_images=True)


def test_changed_store_is_refused(toy_stores):
    cache = toy_stores
    es.build_episodes("toy", cache_dir=cache, folds=[0], shots=[1], n_episodes=20,
                      echo=lambda s: None)
    names = [f"c{k}" for k in range(1, 9)]
    make_mask_store(cache, "toy", "val", random_table(121, 8, seed=3), names)
    es.load_training_list("toy", 0, cache_dir=cache)  # train store unchanged
    with pytest.raises(StoreError, match="rebuild the episodes with: qgnet-prep episodes"):
        es.load_test_episodes("toy", 0, 1, cache_dir=cache)


def test_overlapping_splits_are_refused(tmp_path):
    names = ["a", "b", "c", "d"]
    cp = random_table(20, 4)
    make_mask_store(tmp_path, "pascalish", "train", cp, names, ids=[f"i{k}" for k in range(20)])
    make_mask_store(tmp_path, "pascalish", "val", cp[:5], names, ids=[f"i{k}" for k in range(5)])
    with pytest.raises(ValueError, match="share 5 image"):
        es.build_episodes("pascalish", cache_dir=tmp_path, echo=lambda s: None)


def test_folds_txt_in_dataset_root(tmp_path):
    names = [f"c{k}" for k in range(1, 7)]
    root = tmp_path / "data"
    root.mkdir()
    (root / "folds.txt").write_text("c1 c2\nc3,c4\n")
    make_mask_store(tmp_path, "mine", "train", random_table(200, 6, seed=4), names, root=root)
    make_mask_store(tmp_path, "mine", "val", random_table(100, 6, seed=5), names, root=root)
    es.build_episodes("mine", cache_dir=tmp_path, shots=[1], n_episodes=30, echo=lambda s: None)
    info = json.loads((episodes_dir("mine", cache_dir=tmp_path) / "folds.json").read_text())
    assert info["split_kind"] == "folds.txt" and len(info["folds"]) == 2
    assert es.load_test_episodes("mine", 1, 1, cache_dir=tmp_path)["test_classes"].tolist() == [3, 4]


# ------------------------------------------------------------------------------ real data
def camvid_class_pixels(split):
    from PIL import Image

    files = sorted((CAMVID / split / "masks").glob("*.png"))
    cp = np.zeros((len(files), 12), dtype=np.int64)
    for i, f in enumerate(files):
        counts = np.bincount(np.asarray(Image.open(f)).ravel(), minlength=12)
        cp[i, 1:] = counts[:11]  # ids 0..10 -> classes 1..11; 11 (void) -> 255, not counted
    return cp


@pytest.mark.realdata
@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"real CamVid data not found at {CAMVID}")
def test_camvid_folds_lists_and_episodes():
    train, val = camvid_class_pixels("train"), camvid_class_pixels("val")
    assert train.shape == (367, 12) and val.shape == (101, 12)
    assert ((val[:, 1:] > 0).sum(0) > 0).all()  # every class appears in val
    usable_val = (val[:, 1:] >= 2048).sum(0)
    assert usable_val[CAMVID_NAMES.index("Road")] == 101  # road fills every frame
    expected = {0: [1, 5, 9], 1: [2, 6, 10], 2: [3, 7, 11], 3: [4, 8]}
    for fold, test_exp in expected.items():
        test, tr = ep.fold_classes("camvid", 11, fold)
        assert test.tolist() == test_exp
        tl = ep.training_list(train, tr, test_classes=test)
        assert 300 < len(tl["image_index"]) <= 367
        assert np.isin(tl["classes"], tr).all()
        for shot in (1, 5):
            out = ep.sample_episodes(val, test, shot=shot, n_episodes=1000, seed=321, warn=False)
            check_episodes(val, out, test_exp, shot)
            if fold == 2 and shot == 5:  # Pole: 4 usable val images, too few for 5-shot
                assert out["skipped_classes"].tolist() == [3]
            else:
                assert set(out["cls"].tolist()) == set(test_exp)
