"""Episodic data, evaluation and training on the tiny folder dataset of tests/conftest.py
(``make_fss_toy``)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def toy(make_fss_toy):
    return make_fss_toy("fss", n_episodes=6)


def _train_ds(toy, shot):
    from model.fss.data import TrainEpisodes
    from pipeline.episode_stage import load_training_list

    tl = load_training_list("folder", 0, cache_dir=toy["cache"])
    return TrainEpisodes(tl, shot=shot, crop=65, scale=(0.9, 1.1), dataset="folder",
                         cache_dir=toy["cache"]), tl


def test_training_items_supports_distinct_not_query_class_present(toy):
    ds, tl = _train_ds(toy, shot=2)
    cp = ds.store.extra("class_pixels")
    train_classes = set(np.asarray(tl["train_classes"]).tolist())
    for i in range(len(ds)):
        for seed in range(3):
            q, c, sup = ds.pick(i, np.random.default_rng(seed))
            assert c in train_classes and cp[q, c] > 0  # class present in the query
            assert q not in sup.tolist() and len(set(sup.tolist())) == 2  # K distinct, not the query
            assert (cp[sup, c] >= 2048).all()  # usable in every support
    item = ds[(0, 5)]
    assert item["query"].shape == (3, 65, 65) and item["supports"].shape == (2, 3, 65, 65)
    assert item["support_masks"].shape == (2, 65, 65)
    assert set(item["label"].unique().tolist()) <= {0, 1, 255}
    again = ds[(0, 5)]  # an item depends on its seed only
    assert all(torch.equal(item[k], again[k]) for k in item)


def test_novel_pixels_ignore_turns_test_classes_into_255(toy):
    """--novel-pixels ignore: pixels of the fold's test classes in a training image carry no
    loss (255) instead of being background; the default keeps PFENet's background."""
    from model.fss.data import TrainEpisodes

    ds, tl = _train_ds(toy, shot=1)
    ign = TrainEpisodes(tl, shot=1, crop=65, scale=(0.9, 1.1), dataset="folder",
                        cache_dir=toy["cache"], novel_pixels="ignore")
    test = np.asarray(tl["test_classes"])
    seen = 0
    for i in range(len(ds)):
        q = int(ds.image_index[i])
        raw = ds.store.get(q)
        c = int(np.asarray(tl["train_classes"])[0])
        _, pfenet = ds.load(q, c)
        _, ignored = ign.load(q, c)
        novel = np.isin(raw, test)
        seen += int(novel.sum())
        assert (pfenet[novel] == 0).all() and (ignored[novel] == 255).all()
        np.testing.assert_array_equal(pfenet[~novel], ignored[~novel])
    assert seen > 0  # the toy's training images do hold test-class pixels
    with pytest.raises(ValueError, match="novel_pixels"):
        TrainEpisodes(tl, shot=1, crop=65, scale=(0.9, 1.1), dataset="folder", novel_pixels="drop")


def test_sampler_resumes_mid_epoch():
    from model.fss.data import EpisodeSampler

    full = list(EpisodeSampler(10, seed=1, epoch=2))
    assert sorted(i for i, _ in full) == list(range(10))
    assert list(EpisodeSampler(10, seed=1, epoch=2, start=4)) == full[4:]
    assert [i for i, _ in full] != [i for i, _ in EpisodeSampler(10, seed=1, epoch=3)]
    r0 = list(EpisodeSampler(11, seed=1, epoch=0, rank=0, world=2))
    r1 = list(EpisodeSampler(11, seed=1, epoch=0, rank=1, world=2))
    assert len(r0) == len(r1) == 5 and not set(r0) & set(r1)


class AllForeground(torch.nn.Module):
    """Stand-in network: every pixel foreground, logits at the padded input size."""
    use_prior_map = False

    def forward(self, query, supports, masks, return_maps=False):
        n, _, h, w = query.shape
        logits = torch.stack([torch.zeros(n, h, w), torch.ones(n, h, w)], 1).requires_grad_()
        return {"logits": logits, "aux": [], "guided_map": torch.ones(n, 1, 9, 9),
                "prior_map": None}


def test_scoring_at_original_resolution_ignores_255(toy):
    from model.fss.evaluate import evaluate
    from pipeline.episode_stage import load_test_episodes
    from pipeline.mask_stage import locate_mask_store

    eps = load_test_episodes("folder", 0, 1, cache_dir=toy["cache"])
    # crop 33 < 80: the query is shrunk to 32 x 32 and padded, scored back at 80 x 80
    res = evaluate(AllForeground(), eps, dataset="folder", crop=33, cache_dir=toy["cache"],
                   device="cpu", workers=0, progress=False, write=False, regions=True)
    store = locate_mask_store("folder", "val", cache_dir=toy["cache"])
    inter, union = {}, {}
    for q, c in zip(eps["query"], eps["cls"], strict=True):
        m = store.get(int(q))
        valid = m != 255
        inter[c] = inter.get(c, 0) + ((m == c) & valid).sum()
        union[c] = union.get(c, 0) + valid.sum()  # all-foreground prediction
    expect = np.mean([inter[c] / union[c] for c in inter])
    assert res["miou"]["mean"] == pytest.approx(expect, rel=1e-9)
    assert set(res["per_class"]) == {str(c) for c in inter}
    assert res["runs"][0]["guided"]["recall"]["0.5"] == pytest.approx(1.0)  # map of ones


def test_a_few_steps_lower_the_loss(toy):
    from model.fss import build
    from model.fss.data import collate

    torch.manual_seed(0)
    ds, _ = _train_ds(toy, shot=1)
    batch = collate([ds[(i, i)] for i in range(4)])
    model = build.build_model({"backbone": "efficientnet_lite0", "weights": "imagenet",
                               "use_prior_map": True, "prior": "imagenet",
                               "prior_backbone": "efficientnet_lite0", "crop": 65})
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.025, momentum=0.9, weight_decay=1e-4)
    model.train()
    losses = [float(build.step(model, batch, device=torch.device("cpu"), optimizer=opt)["loss"])
              for _ in range(6)]
    assert losses[-1] < losses[0]
    assert all(not p.requires_grad for p in model.backbone.parameters())


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(toy):
    from model.fss.config import FssConfig
    from model.fss.trainer import train_fss

    common = dict(dataset="folder", fold=0, shot=1, use_prior_map=False, crop=33, batch_size=2,
                  epochs=2, workers=0, threads=1, val_episodes=0, log_every=1, progress=False,
                  cache_dir=toy["cache"], device="cpu")
    a = train_fss(FssConfig(**common, max_steps=4, out=str(toy["base"] / "a")))
    b = toy["base"] / "b"
    train_fss(FssConfig(**common, max_steps=2, out=str(b)))
    with pytest.raises(FileExistsError):
        train_fss(FssConfig(**common, max_steps=4, out=str(b)))
    train_fss(FssConfig(**common, max_steps=4, out=str(b), resume=str(b)))

    def losses(run):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}

    la, lb = losses(a), losses(b)
    assert sorted(la) == [1, 2, 3, 4] and sorted(lb) == [1, 2, 3, 4]
    assert all(la[s] == lb[s] for s in la), (la, lb)
    ck = torch.load(b / "last.pt", weights_only=True)
    assert ck["step"] == 4 and ck["model_meta"]["use_prior_map"] is False
    assert not any(k.startswith("backbone.") for k in ck["model"])  # frozen weights not stored


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_ranks_gloo(toy):
    import subprocess
    import sys

    out = toy["base"] / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cli.train",
           "fss", "--dataset", "folder", "--cache-dir", toy["cache"], "--no-prior-map", "--crop", "33",
           "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--workers", "0", "--threads", "1",
           "--device", "cpu", "--val-episodes", "4", "--log-every", "1", "--no-progress",
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]  # rank 0 writes once
    val = [r for r in rows if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["episodes"] == 4  # both ranks' shares merged
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    # the logged validation loss is the mean over both ranks' episodes (issue 13 section 6),
    # not rank 0's share: one process scoring all 4 episodes with best.pt gets the same
    from model.fss import evaluate as ev
    from model.fss.build import load_model
    from pipeline.episode_stage import load_test_episodes
    from pipeline.episodes import VAL_SEED

    model, _ = load_model(out / "best.pt")
    eps = load_test_episodes("folder", 0, 1, seed=VAL_SEED, cache_dir=toy["cache"])
    loader = ev.test_loader(eps, dataset="folder", crop=33, cache_dir=toy["cache"], limit=4)
    r = ev.run_episodes(model, loader, classes=list(eps["test_classes"]), device=torch.device("cpu"))
    assert r["episodes"] == 4 and val[0]["val_loss"] == pytest.approx(r["loss"], rel=1e-4)


def test_batched_evaluation_equals_batch_one(toy):
    """Episodes batched 4 per forward give the same per-episode intersections and unions
    (and so the same meter) as one episode per forward; the counts stay on the device."""
    from model.fss import evaluate as ev
    from model.fss.build import build_model
    from model.fss.metrics import intersection_union
    from pipeline.episode_stage import load_test_episodes

    torch.manual_seed(0)
    model = build_model({"backbone": "efficientnet_lite0", "weights": "imagenet",
                         "use_prior_map": True, "prior": "imagenet",
                         "prior_backbone": "efficientnet_lite0", "crop": 65})
    eps = load_test_episodes("folder", 0, 1, cache_dir=toy["cache"])
    classes = np.asarray(eps["test_classes"]).tolist()
    out = {}
    for bs in (1, 4):
        loader = ev.test_loader(eps, dataset="folder", crop=65, cache_dir=toy["cache"], batch_size=bs)
        out[bs] = ev.run_episodes(model, loader, classes=classes, device=torch.device("cpu"))
    a, b = out[1]["per_episode"], out[4]["per_episode"]
    assert a["episode"].tolist() == b["episode"].tolist() == list(range(len(eps["query"])))
    np.testing.assert_array_equal(a["cls"], np.asarray(eps["cls"]))
    assert sorted(a["confusion"]) == sorted(b["confusion"]) == ["exact", "pfenet"]
    for scoring in ("pfenet", "exact"):  # both scorings of the pass, batch 1 == batch 4
        np.testing.assert_array_equal(a["confusion"][scoring], b["confusion"][scoring])
        inter, union = intersection_union(a["confusion"][scoring])
        assert (inter <= union).all() and union.sum() > 0
        np.testing.assert_array_equal(out[1]["meters"][scoring].confusion,
                                      out[4]["meters"][scoring].confusion)
        # the per-episode counts add up to the meter's per-class sums
        for i, c in enumerate(out[4]["meters"][scoring].class_ids):
            sel = b["cls"] == c
            assert b["confusion"][scoring][sel, 1, 1].sum() == out[4]["meters"][scoring].confusion[i, 1, 1]
    assert out[1]["meter"] is out[1]["meters"]["pfenet"]
    assert out[1]["loss"] == pytest.approx(out[4]["loss"], rel=1e-5)


def test_validation_episodes_use_another_seed_and_are_derived_when_missing(make_fss_toy):
    """best.pt is chosen on seed VAL_SEED, not on the test seed; `qgnet-prep episodes` writes
    that file by default, and the trainer re-derives it (identically) on older caches."""
    from model.fss.config import FssConfig
    from pipeline.cache import episodes_dir
    from pipeline.episode_stage import derive_test_episodes, load_test_episodes
    from pipeline.episodes import DEFAULT_SEED, VAL_SEED

    assert FssConfig().val_seed == VAL_SEED != DEFAULT_SEED
    t = make_fss_toy("valseed", n_episodes=6)
    built = load_test_episodes("folder", 0, 1, seed=VAL_SEED, cache_dir=t["cache"])
    test = load_test_episodes("folder", 0, 1, seed=DEFAULT_SEED, cache_dir=t["cache"])
    assert Path(built["path"]).name != Path(test["path"]).name and built["seed"] == VAL_SEED
    # (on this toy every class has two usable val images, so the draws cannot differ)
    (episodes_dir("folder", cache_dir=t["cache"]) / Path(built["path"]).name).unlink()
    again = derive_test_episodes("folder", 0, 1, seed=VAL_SEED, cache_dir=t["cache"])
    for k in ("query", "support", "cls", "test_classes", "skipped_classes"):
        np.testing.assert_array_equal(again[k], built[k])
    assert again["seed"] == VAL_SEED and again["min_pixels"] == built["min_pixels"]


@pytest.mark.slow
def test_frozen_bn_reference_is_saved_resumed_and_evaluated(toy):
    """--frozen-bn reference: the drifted BatchNorm statistics of both frozen backbones are
    in the checkpoint (and nothing else of theirs), a resumed run reproduces the
    uninterrupted one, the option cannot change on resume, and load_model evaluates in eval
    mode with the saved statistics."""
    from model.backbones import build_backbone
    from model.fss.build import BN_STATS, load_model
    from model.fss.config import RESUMABLE, FssConfig
    from model.fss.trainer import train_fss
    from pipeline.errors import ConfigError
    from pipeline.settings import check_resume, config_dict

    common = dict(dataset="folder", fold=0, shot=1, use_prior_map=True, prior="imagenet",
                  crop=33, batch_size=2, epochs=2, workers=0, threads=1, val_episodes=0,
                  log_every=1, progress=False, cache_dir=toy["cache"], device="cpu",
                  frozen_bn="reference")
    a = train_fss(FssConfig(**common, max_steps=3, out=str(toy["base"] / "bn-a")))
    b = toy["base"] / "bn-b"
    train_fss(FssConfig(**common, max_steps=1, out=str(b)))
    train_fss(FssConfig(**common, max_steps=3, out=str(b), resume=str(b)))

    def losses(run):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}

    assert losses(a) == losses(b) and sorted(losses(a)) == [1, 2, 3]
    ca = torch.load(a / "last.pt", weights_only=True)
    cb = torch.load(b / "last.pt", weights_only=True)
    assert ca["model_meta"]["frozen_bn"] == "reference"
    frozen = {k for k in ca["model"] if k.startswith(("backbone.", "prior_backbone."))}
    assert frozen and all(k.rsplit(".", 1)[-1] in BN_STATS for k in frozen)
    assert any(k.startswith("prior_backbone.") for k in frozen)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    fresh = build_backbone("efficientnet_lite0", weights="imagenet").state_dict()
    drifted = [k for k in frozen if k.startswith("backbone.") and k.endswith("running_mean")]
    assert drifted and not any(torch.equal(ca["model"][k], fresh[k[len("backbone."):]])
                               for k in drifted)  # three steps moved every running mean
    model, _ = load_model(a / "last.pt")
    assert not any(m.training for m in model.modules())
    sd = model.state_dict()
    assert all(torch.equal(sd[k], ca["model"][k]) for k in frozen)
    with pytest.raises(ConfigError, match="frozen_bn"):
        check_resume(ca["config"], {**config_dict(FssConfig(**common)), "frozen_bn": "eval"},
                     resumable=RESUMABLE)
