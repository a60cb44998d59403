"""The stages on FSS-1000 and the cross-domain sets: object-mask stores with image_class,
test episodes on the ``test`` split with each benchmark's protocol, count and seed, and the
benchmark registry a bench command enumerates."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.benchmarks import BENCHMARKS, benchmark_for, eval_split
from pipeline.cache import episodes_dir
from pipeline.datasets import DATASETS, open_dataset
from pipeline.episode_stage import (
    build_episodes,
    derive_test_episodes,
    load_test_episodes,
    load_training_list,
)
from pipeline.episodes import (
    PROTOCOLS,
    VAL_SEED,
    fold_classes,
    numeric_name_rank,
    reference_episodes,
)
from pipeline.errors import ConfigError, StoreError
from pipeline.mask_stage import build_mask_store
from pipeline.store import ShardedStore

QUIET = {"workers": 1, "scheduler": "sync", "progress": False}


def test_registry_names_readers_protocols_and_sources():
    assert set(BENCHMARKS) == {"pascal", "coco", "fss1000", "deepglobe", "isic", "chest"}
    for name, b in BENCHMARKS.items():
        assert b.dataset in DATASETS and b.protocol in PROTOCOLS and b.where, name
        assert b.eval_split in DATASETS[b.dataset].splits or b.dataset in ("pascal", "coco")
    assert (BENCHMARKS["coco"].episodes, BENCHMARKS["coco"].seed) == (20000, 321)
    fss = BENCHMARKS["fss1000"]
    assert (fss.episodes, fss.seed, fss.image_size, fss.scoring) == (None, 0, 400, "hsnet")
    for name in ("deepglobe", "isic", "chest"):
        b = BENCHMARKS[name]
        assert (b.protocol, b.episodes, b.seed, b.train_split, b.folds) == (
            "patnet", 600, 0, None, (0,))
    folder = benchmark_for("camvid")
    assert (folder.eval_split, folder.protocol, folder.episodes) == ("val", "pfenet", 1000)
    assert eval_split("fss1000") == "test" and eval_split("demo") == "val"


def test_fixed_splits():
    test, train = fold_classes("fss1000", 1000, 0)
    assert (test[0], test[-1], len(test)) == (761, 1000, 240)
    assert (train[0], train[-1], len(train)) == (1, 520, 520)  # val classes in neither
    test, train = fold_classes("isic", 3, 0)
    assert test.tolist() == [1, 2, 3] and train.size == 0
    with pytest.raises(ConfigError, match="fold 1 does not exist for FSS-1000"):
        fold_classes("fss1000", 1000, 1)


@pytest.fixture(scope="module")
def fss_cache(fss_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fsscache")
    store, report = build_mask_store("fss1000", root=fss_root, split="test", cache_dir=cache,
                                     **QUIET)
    return cache, store


def test_fss1000_store_keeps_object_masks_and_classes(fss_cache, fss_root):
    _, store = fss_cache
    assert store.complete and store.n == 2400 and not store.failures
    assert store.attrs["image_classes"] is True and store.attrs["num_classes"] == 1000
    ic = store.extra("image_class")
    assert ic[0] == 761 and ic[-1] == 1000 and (ic > 760).all()
    cp = store.extra("class_pixels")
    assert cp.shape == (2400, 1001)
    ds = open_dataset("fss1000", fss_root)
    for i in (0, 1234, 2399):
        mask = store.get(i)
        assert np.array_equal(mask, ds.load_mask(store.ids[i]))
        assert set(np.unique(mask)) <= {0, 1}
        assert cp[i, ic[i]] == (mask == 1).sum() and cp[i, 0] == (mask == 0).sum()
        assert cp[i].sum() == mask.size


def test_fss1000_episodes_default_to_hsnets_protocol(fss_cache):
    cache, store = fss_cache
    lines = []
    build_episodes("fss1000", cache_dir=cache, shots=[1], echo=lines.append)
    text = "\n".join(lines)
    assert "test episodes only" in text and "qgnet-prep masks --dataset fss1000 --split train" in text
    assert "test 1-shot seed 0 (hsnet): 2400 episodes (one per test image)" in text
    names = sorted(p.name for p in episodes_dir("fss1000", cache_dir=cache).iterdir())
    assert names == ["folds.json", "test-fold0-shot1-hsnet-seed0.npz"]  # no training: no val seed
    info = json.loads((episodes_dir("fss1000", cache_dir=cache) / "folds.json").read_text())
    assert info["eval_split"] == "test" and info["split_kind"] == "fss1000-hsnet"
    ep = load_test_episodes("fss1000", 0, 1, seed=0, protocol="hsnet", cache_dir=cache)
    assert ep["split"] == "test" and len(ep["query"]) == 2400
    assert ep["query"].tolist() == list(range(2400))  # every image once, in HSNet's order
    expect = reference_episodes(store.extra("image_class"), range(761, 1001), shot=1, seed=0,
                                rule="fss", pool_rank=numeric_name_rank(store.ids))
    assert np.array_equal(ep["support"], expect["support"])
    # the validation seed of the trainer is drawn the same way, on the same store
    val = derive_test_episodes("fss1000", 0, 1, seed=VAL_SEED, protocol="hsnet", cache_dir=cache)
    assert val["split"] == "test" and len(val["query"]) == 2400
    with pytest.raises(FileNotFoundError, match="qgnet-prep episodes"):
        load_training_list("fss1000", 0, cache_dir=cache)
    with pytest.raises(StoreError, match="qgnet-prep masks --dataset fss1000 --split train"):
        build_episodes("fss1000", cache_dir=cache, shots=[1], training_lists=True,
                       echo=lambda s: None)


@pytest.mark.parametrize("name", ["deepglobe", "isic", "chest"])
def test_cross_domain_episodes_patnet(request, tmp_path, name):
    root = request.getfixturevalue(f"{name}_root")
    build_mask_store(name, root=root, split="test", cache_dir=tmp_path, **QUIET)
    lines = []
    build_episodes(name, cache_dir=tmp_path, shots=[1, 5], seeds=[0], echo=lines.append)
    text = "\n".join(lines)
    assert "no training lists" in text and "test 5-shot seed 0 (patnet): 600 episodes" in text
    ep = load_test_episodes(name, 0, 5, seed=0, protocol="patnet", cache_dir=tmp_path)
    c = DATASETS[name](root).num_classes
    assert ep["split"] == "test" and ep["support"].shape == (600, 5)
    assert ep["cls"][: 2 * c].tolist() == list(range(1, c + 1)) * 2  # class i mod C
    store = ShardedStore.open(tmp_path / name / "masks" / "test.zarr", kind="masks")
    ic = store.extra("image_class")
    assert (ic[ep["query"]] == ep["cls"]).all() and (ic[ep["support"]] == ep["cls"][:, None]).all()
    assert (ep["support"] != ep["query"][:, None]).all()
    with pytest.raises(ConfigError, match="use --protocol patnet"):
        build_episodes(name, cache_dir=tmp_path, protocol="pfenet", echo=lambda s: None)
    with pytest.raises(ConfigError, match="evaluation-only benchmark"):
        build_episodes(name, cache_dir=tmp_path, training_lists=True, echo=lambda s: None)


def test_patnet_protocol_is_for_its_datasets(tmp_path):
    from pipeline.episodes import reference_rule

    with pytest.raises(ConfigError, match="--protocol patnet applies to fss1000"):
        reference_rule("pascal", "patnet")
    assert reference_rule("fss1000", "patnet") == "fss"  # PATNet reuses HSNet's reader


def test_reference_episodes_edge_cases():
    ic = np.array([1, 1, 2, 3, 3, 3, 0])
    with pytest.warns(UserWarning, match=r"fewer than 2 images .*\[2\]"):
        ep = reference_episodes(ic, [1, 2, 3], shot=2, seed=0, rule="patnet", n_episodes=8)
    assert ep["skipped_classes"].tolist() == [2] and set(ep["cls"].tolist()) == {1, 3}
    assert 6 not in ep["query"].tolist()  # a failed image (class 0) is never drawn
    short = reference_episodes(ic, [1, 3], shot=2, seed=0, rule="patnet", n_episodes=3)
    assert np.array_equal(short["support"], ep["support"][:3])  # a prefix of the same draws
    with pytest.raises(ConfigError, match="no test class"):
        reference_episodes(ic, [2], shot=1, seed=0, rule="fss", warn=False)


def test_eval_protocol_takes_what_is_unset_from_the_benchmark():
    """The one place qgnet-eval fss and bench take protocol, scoring, seeds and HSNet's square
    side from: each benchmark's published protocol unless the caller sets it."""
    from pipeline.benchmarks import eval_protocol

    for name, b in BENCHMARKS.items():
        p = eval_protocol(name)
        assert (p.protocol, p.scoring, p.seeds, p.given) == (b.protocol, b.scoring, (b.seed,), ())
        assert p.image_size == (b.image_size if b.scoring.startswith("hsnet") else None)
    assert [eval_protocol(n).scoring for n in ("pascal", "coco", "fss1000", "deepglobe", "isic",
                                               "chest", "camvid")] == [
        "pfenet", "pfenet", "hsnet", "hsnet", "hsnet", "hsnet", "pfenet"]
    p = eval_protocol("fss1000", scoring="exact", seeds=[3, 4])
    assert (p.protocol, p.scoring, p.seeds, p.image_size, p.given) == (
        "hsnet", "exact", (3, 4), None, ("scoring", "seeds"))
    p = eval_protocol("camvid", protocol="hsnet")  # another protocol: that protocol's test seed
    assert (p.scoring, p.seeds, p.benchmark.name) == ("pfenet", (0,), "camvid")
    assert eval_protocol("demo", scoring="hsnet").image_size is None  # the evaluator's 400
    assert eval_protocol("chest", image_size=64).image_size == 64


def test_ensure_test_episodes_makes_a_missing_file_as_qgnet_prep_episodes_would(demo_root,
                                                                               tmp_path):
    """A missing episode file is made from the evaluation store: with the benchmark's defaults
    when there is no folds.json, else with the classes, min_pixels and count recorded there;
    either way the file qgnet-prep episodes writes for the same settings (the oracle)."""
    from pipeline.episode_stage import ensure_test_episodes

    def arrays(ep):
        return [np.asarray(ep[k]).tolist() for k in ("query", "support", "cls", "test_classes")]

    caches = [tmp_path / name for name in ("a", "b", "c")]
    for cache in caches:
        build_mask_store("demo", root=demo_root, split="val", cache_dir=cache, **QUIET)
    quiet = {"echo": lambda s: None}
    # no folds.json: build_episodes with the benchmark's defaults, no training list
    ep, made = ensure_test_episodes("demo", 1, 1, seed=321, protocol="pfenet",
                                    cache_dir=caches[0], **quiet)
    assert made and ep["protocol"] == "pfenet" and len(ep["query"]) == 1000 and ep["fold"] == 1
    assert sorted(p.name for p in episodes_dir("demo", cache_dir=caches[0]).iterdir()) == [
        "folds.json", "test-fold1-shot1-pfenet-seed321.npz"]
    again, made = ensure_test_episodes("demo", 1, 1, seed=321, protocol="pfenet",
                                       cache_dir=caches[0], **quiet)
    assert not made and arrays(again) == arrays(ep)
    # folds.json of qgnet-prep episodes (its own count and min_pixels): the new shot follows it
    build_episodes("demo", cache_dir=caches[1], folds=[1], shots=[1], n_episodes=30,
                   min_pixels=500, training_lists=False, **quiet)
    ep, made = ensure_test_episodes("demo", 1, 2, seed=321, protocol="pfenet",
                                    cache_dir=caches[1], **quiet)
    assert made and len(ep["query"]) == 30 and ep["min_pixels"] == 500
    build_episodes("demo", cache_dir=caches[2], folds=[1], shots=[2], seeds=[321], n_episodes=30,
                   min_pixels=500, training_lists=False, **quiet)
    expect = load_test_episodes("demo", 1, 2, seed=321, protocol="pfenet", cache_dir=caches[2])
    assert arrays(ep) == arrays(expect)
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        ensure_test_episodes("demo", 7, 1, seed=321, protocol="pfenet", cache_dir=caches[1],
                             **quiet)
    with pytest.raises(StoreError, match="qgnet-prep masks --dataset chest"):
        ensure_test_episodes("chest", 0, 1, seed=0, protocol="patnet", cache_dir=caches[1],
                             **quiet)
