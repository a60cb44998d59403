"""Prior pretraining: streaming data, the training loop, exact resume, DDP and export.

A tiny folder dataset cut from scikit-image's sample photos (4 crops of each of 12 photos,
48 images of 64 x 64) with SLIC maps computed here with skimage and written through
ShardedStore; a 30k-parameter backbone registered as "tiny" in ``BACKBONES``, crop 64,
queues of 16-128. (resnet18 takes seconds per step on the shared 2-core CI machine.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones import BACKBONES, Backbone
from model.prior.config import PriorConfig, check_resume_config, finalize_config
from model.prior.data import EpochSampler, PriorPairs, check_patch_store, collate, sample_seed
from model.prior.trainer import find_checkpoint, lr_factor, train_prior
from pipeline.store import ShardedStore, StoreError

REPO = Path(__file__).resolve().parents[3]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel",
          "hubble_deep_field", "retina", "logo", "coins", "camera", "page")
BAD = "zz_bad"  # an image whose patch map failed in the store


class TinyBackbone(Backbone):
    """Five conv-BN-ReLU stages, strides 2, 4, 8, 8, 16 (about 30k parameters)."""

    def __init__(self, *, dilated: bool = True, stem: str = "standard"):
        ch = {"layer0": 8, "layer1": 16, "layer2": 24, "layer3": 32, "layer4": 48}
        st = {"layer0": 2, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 16}
        super().__init__(name="tiny", channels=ch, strides=st, dilated=dilated)
        cin, prev = 3, 1
        for name in ch:
            stride = st[name] // prev
            prev = st[name]
            setattr(self, name, torch.nn.Sequential(
                torch.nn.Conv2d(cin, ch[name], 3, stride=stride, padding=1, bias=False),
                torch.nn.BatchNorm2d(ch[name]), torch.nn.ReLU(inplace=True)))
            cin = ch[name]

    def _run_stage(self, name, x):
        return getattr(self, name)(x)


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    monkeypatch.setitem(BACKBONES, "tiny", TinyBackbone)


def _photos(name: str) -> list[np.ndarray]:
    """Four 64 x 64 crops of a sample photo resized to 96 x 96 (uint8 RGB)."""
    from skimage import color, data, transform

    img = getattr(data, name)()
    if img.ndim == 2:
        img = color.gray2rgb(img)
    img = (transform.resize(img[..., :3], (96, 96), anti_aliasing=True) * 255).astype(np.uint8)
    return [img[a:a + 64, b:b + 64] for a in (0, 32) for b in (0, 32)]


def make_folder_dataset(root: Path, store_path: Path, *, dataset="folder", split="train") -> list[str]:
    """Photos as a folder dataset (+1 image whose store row failed) and their SLIC store."""
    from PIL import Image
    from skimage.segmentation import slic

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("thing\n")
    ids, maps = [], []
    for name in PHOTOS:
        for j, img in enumerate(_photos(name)):
            Image.fromarray(img).save(root / "images" / f"{name}{j}.jpg", quality=95)
            ids.append(f"{name}{j}")
            maps.append(slic(img, n_segments=8, compactness=10, start_label=1).astype(np.uint16))
    Image.fromarray(_photos("astronaut")[0]).save(root / "images" / f"{BAD}.jpg")
    ids.append(BAD)
    maps.append(None)
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "val.txt").write_text(ids[0] + "\n")
    hw = np.array([m.shape if m is not None else (0, 0) for m in maps])
    store = ShardedStore.create(store_path, ids=ids, hw=hw, maps="labels", dtype="uint16",
                                attrs={"kind": "superpixels", "dataset": dataset,
                                       "split": split, "method": "slic"},
                                extras={"n_segments": ((), "int32")}, shard_size=16)
    for k in range(store.n_shards):
        a, b = store.shard_range(k)
        block = maps[a:b]
        store.write_shard(k, block, extras={"n_segments": np.array(
            [int(m.max()) if m is not None else 0 for m in block], np.int32)},
            failures=[{"id": ids[a + j], "reason": "test"} for j, m in enumerate(block) if m is None])
    return ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("prior")
    ids = make_folder_dataset(base / "data", base / "slic-train.zarr")
    return {"root": base / "data", "store": base / "slic-train.zarr", "ids": ids, "base": base}


def tiny_config(tiny, out: Path, **kw) -> PriorConfig:
    opts = dict(dataset="folder", root=str(tiny["root"]), patch_store=str(tiny["store"]),
                backbone="tiny", init="none", crop=64, batch_size=8, epochs=4,
                queue_size=16, local_queue_size=128, dim=32, mlp_hidden=64,
                patches_per_image=4, split_bn_groups=2, momentum=0.99, workers=0,
                # 8 SLIC segments per 64 x 64 image: each is 1/8 of the image, above the default
                # window's 1/16 of the view; keep the rule these tests were written for (at
                # least half a 16 x 16 cell, no upper bound, empty slots stay empty)
                min_patch_pixels=128, max_patch_pixels=64 * 64, patch_fill="none",
                device="cpu", ckpt_every=1000, log_every=1, progress=False, seed=0,
                out=str(out))
    opts.update(kw)
    return PriorConfig(**opts)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ data
def _pairs(tiny, seed=0):
    from model.prior.augment import PairedAugment
    from pipeline.datasets import open_dataset

    ds = open_dataset("folder", tiny["root"])
    return PriorPairs(ds, tiny["store"], ds.ids("train"), augment=PairedAugment(size=32), seed=seed)


def test_dataset_rows_match_ids_and_skip_failed(tiny):
    pairs = _pairs(tiny)
    store = ShardedStore.open(tiny["store"])
    assert pairs.dropped == [BAD]
    assert BAD not in pairs.ids and len(pairs) == 4 * len(PHOTOS)
    for i, image_id in enumerate(pairs.ids):
        s = pairs[(0, i)]
        assert int(s["index"]) == i and int(s["skipped"]) == 0
        assert int(s["row"]) == store.index(image_id)  # the store row of this very image
        image, pmap = pairs.read(i)
        np.testing.assert_array_equal(pmap, store.get_by_id(image_id))
        assert image.shape[:2] == pmap.shape
        assert s["im_q"].shape == (3, 32, 32) and s["map_q"].dtype == torch.int64
        assert set(s["map_q"].unique().tolist()) <= set(np.unique(pmap).tolist())


def test_samples_depend_on_seed_epoch_index_only(tiny):
    pairs = _pairs(tiny)
    a, b = pairs[(1, 3)], pairs[(1, 3)]
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["im_q"], a["im_k"])  # two different views
    assert not torch.equal(a["im_q"], pairs[(2, 3)]["im_q"])  # another epoch, other views
    assert sample_seed(0, 1, 3) != sample_seed(0, 3, 1)


def test_workers_give_the_same_batches(tiny):
    pairs = _pairs(tiny)

    def batches(workers):
        sampler = EpochSampler(len(pairs), seed=5)
        loader = torch.utils.data.DataLoader(pairs, batch_size=4, sampler=sampler, drop_last=True,
                                             collate_fn=collate, num_workers=workers,
                                             persistent_workers=workers > 0)
        out = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch, start=4 if epoch == 1 else 0)
            out += list(loader)
        return out

    b0, b2 = batches(0), batches(2)
    assert len(b0) == len(b2) == 12 + 11  # 48 images / 4; epoch 1 starts at its 2nd batch
    for x, y in zip(b0, b2, strict=True):
        for k in x:  # tensors, and the host-side "max_id" (an int)
            assert (torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]), k


def test_unreadable_image_is_replaced_with_a_warning(tiny, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny["root"], root)
    (root / "images" / "coffee0.jpg").write_bytes(b"not a jpeg")
    from model.prior.augment import PairedAugment
    from pipeline.datasets import open_dataset

    ds = open_dataset("folder", root)
    pairs = PriorPairs(ds, tiny["store"], ds.ids("train"), augment=PairedAugment(size=32))
    i = pairs.ids.index("coffee0")
    with pytest.warns(UserWarning, match="skipping image 'coffee0'"):
        s = pairs[(0, i)]
    assert int(s["skipped"]) == 1 and int(s["index"]) == i + 1


def test_store_checks_name_the_problem(tiny):
    store = ShardedStore.open(tiny["store"])
    with pytest.raises(StoreError, match="made for dataset 'folder' split 'train'.*split 'val'"):
        check_patch_store(store, dataset="folder", split="val", split_ids=["x"], hint="CMD")
    with pytest.raises(StoreError, match=r"no patch map for 1 of the 2 images.*CMD"):
        check_patch_store(store, dataset="folder", split="train",
                          split_ids=["coffee0", "not_there"], hint="CMD")


def test_sampler_start_and_ranks():
    s = EpochSampler(10, seed=1)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=4)
    assert list(s) == full[4:] and len(s) == 6
    assert all(e == 3 for e, _ in full)
    r0, r1 = EpochSampler(10, seed=1, rank=0, world=2), EpochSampler(10, seed=1, rank=1, world=2)
    r0.set_epoch(3), r1.set_epoch(3)
    both = [i for _, i in r0] + [i for _, i in r1]
    assert sorted(both) == sorted(i for _, i in full)


# ------------------------------------------------------------------------------ config
def test_config_checks():
    with pytest.raises(ValueError, match="--init PATH to a torchvision ResNet state dict.*--init none"):
        finalize_config(PriorConfig(dataset="demo", backbone="resnet50", init="imagenet"))
    cfg = finalize_config(PriorConfig(dataset="demo", backbone="efficientnet_lite0",
                                      batch_size=64, workers=1))
    assert cfg.lr == pytest.approx(0.0075) and cfg.shuffle == "split-bn"
    assert cfg.out.endswith("demo-train-efficientnet_lite0-both")
    with pytest.raises(ValueError, match="loss: checkpoint 'both', now 'global'"):
        check_resume_config(dataclasses.replace(cfg, loss="global"), dataclasses.asdict(cfg))
    check_resume_config(dataclasses.replace(cfg, max_steps=9, workers=3), dataclasses.asdict(cfg))
    assert lr_factor(0, total=10, steps_per_epoch=5, schedule="cosine") == 1.0
    assert lr_factor(5, total=10, steps_per_epoch=5, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(4, total=10, steps_per_epoch=5, schedule="cosine-epoch") == 1.0


# ------------------------------------------------------------------------------ training
def test_twenty_steps_lower_the_loss(tiny, tmp_path):
    # Step 1 contrasts against the random initial queue (an easy, low loss); the queue holds
    # real keys from step 2 on (queue = one batch), so compare steps 2-4 with steps 18-20.
    # Mild crops (scale 0.9-1) and T 0.5 make 20 steps of a tiny network enough to learn.
    cfg = tiny_config(tiny, tmp_path / "run", epochs=20, max_steps=20, lr=0.05, loss="both",
                      queue_size=8, local_queue_size=32, momentum=0.9, scale_min=0.9,
                      temperature=0.5, ckpt_every=None)
    run = train_prior(cfg)
    metrics = read_metrics(run)
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 20 and all(np.isfinite(losses))
    first, last = np.mean(losses[1:4]), np.mean(losses[-3:])
    assert last < first - 0.3, losses
    assert {"loss_global", "loss_local", "acc_global", "n_patches", "images_per_s", "data_wait",
            "lr", "epoch", "skipped_images"} <= set(metrics[-1])
    assert min(m["n_patches"] for m in metrics) > 0  # the local loss ran at every step
    assert (run / "train.log").read_text().count("loss") >= 20


def test_resume_reproduces_the_uninterrupted_run(tiny, tmp_path):
    # 48 images, batch 8 -> 6 steps per epoch; 1 epoch = 6 steps, checkpoint at step 3
    kw = dict(epochs=1, ckpt_every=3, queue_size=32, local_queue_size=64)
    full = train_prior(tiny_config(tiny, tmp_path / "full", keep_checkpoints=0, **kw))
    ref = [m["loss"] for m in read_metrics(full)]
    assert len(ref) == 6
    # the "kill": stop after step 3; then a half-written newer checkpoint is left behind
    part = train_prior(tiny_config(tiny, tmp_path / "part", max_steps=3, **kw))
    ckpts = part / "checkpoints"
    assert find_checkpoint(part).name == "step-0000003.pt"
    (ckpts / "step-0000005.pt.tmp4242").write_bytes(b"half a checkpoint")
    assert find_checkpoint(part).name == "step-0000003.pt"
    resumed = train_prior(tiny_config(tiny, part, resume="auto", **kw))
    metrics = read_metrics(resumed)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    got = [m["loss"] for m in metrics]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    a = torch.load(full / "checkpoints" / "step-0000006.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "step-0000006.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6)
    with pytest.raises(FileExistsError, match="--resume"):
        train_prior(tiny_config(tiny, part, **kw))


def test_crop_mode_trains_and_resumes_bit_identically(tiny, tmp_path):
    """--local-patches crop through the trainer: one patch per image at every step, the
    loader untouched (same store, same batches), and a killed run resumed from its step-3
    checkpoint computes the uninterrupted run's losses and weights."""
    kw = dict(epochs=1, ckpt_every=3, queue_size=32, local_queue_size=64, local_patches="crop",
              patches_per_image=None, patch_size=32)
    full = train_prior(tiny_config(tiny, tmp_path / "full", keep_checkpoints=0, **kw))
    ref = read_metrics(full)
    assert len(ref) == 6 and all(m["n_patches"] == 8 for m in ref)  # batch 8, one patch each
    assert json.loads((full / "config.json").read_text())["patches_per_image"] == 1
    part = train_prior(tiny_config(tiny, tmp_path / "part", max_steps=3, **kw))
    resumed = train_prior(tiny_config(tiny, part, resume="auto", **kw))
    got = read_metrics(resumed)
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in ref], rtol=0, atol=1e-6)
    a = torch.load(full / "checkpoints" / "step-0000006.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "step-0000006.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="local_patches"):  # the reading cannot change on resume
        train_prior(tiny_config(tiny, part, resume="auto", **{**kw, "local_patches": "pooled",
                                                               "patches_per_image": 1}))


def test_resume_mid_epoch_with_workers(tiny, tmp_path):
    # batch 16 -> 3 steps per epoch, 2 epochs; kill at step 4 (mid epoch 1), resume with 2 workers
    kw = dict(epochs=2, batch_size=16, loss="global", queue_size=16)
    ref = [m["loss"] for m in read_metrics(train_prior(tiny_config(tiny, tmp_path / "a", **kw)))]
    part = train_prior(tiny_config(tiny, tmp_path / "b", max_steps=4, **kw))
    assert torch.load(find_checkpoint(part), weights_only=True)["batch_in_epoch"] == 1
    resumed = train_prior(tiny_config(tiny, part, resume=str(part), workers=2, **kw))
    got = [m["loss"] for m in read_metrics(resumed)]
    assert len(got) == len(ref) == 6
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_export_loads_as_a_backbone(tiny, tmp_path):
    from model.backbones import build_backbone, read_prior_export
    from model.prior.export import export_prior

    run = train_prior(tiny_config(tiny, tmp_path / "run", epochs=1, loss="global"))
    blob = torch.load(run / "prior_extractor.pt", weights_only=True)
    assert blob["backbone_name"] == "tiny" and blob["dilated"] is False
    # the writer's format is what the one reader (model.backbones.weights) reads
    assert read_prior_export(run / "prior_extractor.pt", backbone_name="tiny").keys() == blob.keys()
    assert blob["config"]["crop"] == 64 and "versions" in blob["provenance"]
    ckpt = torch.load(find_checkpoint(run), weights_only=True)
    bb = build_backbone("tiny", weights=str(run / "prior_extractor.pt"), dilated=True)
    key_w = ckpt["model"]["encoder_k.backbone.layer4.0.weight"]  # the key encoder's
    assert torch.equal(bb.state_dict()["layer4.0.weight"], key_w)
    assert not torch.equal(key_w, ckpt["model"]["encoder_q.backbone.layer4.0.weight"])
    out = export_prior(find_checkpoint(run), tmp_path / "again")
    assert out == tmp_path / "again" / "prior_extractor.pt"


# ------------------------------------------------------------------------------ DDP
LAUNCHER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("prior_trainer_tests", {test!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.BACKBONES["tiny"] = mod.TinyBackbone
from cli.train import main
main(sys.argv[1:], prog_name="qgnet-train")
"""


@pytest.mark.ddp
def test_two_process_ddp_on_cpu(tiny, tmp_path):
    out = tmp_path / "ddp"
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(test=str(Path(__file__).resolve())))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(29500 + os.getpid() % 1000), str(launcher), "prior",
           "--dataset", "folder", "--root", str(tiny["root"]), "--patch-store", str(tiny["store"]),
           "--backbone", "tiny", "--init", "none", "--crop", "64", "--batch-size", "8",
           "--epochs", "1", "--max-steps", "3", "--queue-size", "64",
           "--local-queue-size", "128", "--dim", "32", "--mlp-hidden", "64",
           "--patches-per-image", "4", "--workers", "0", "--device", "cpu", "--log-every", "1",
           "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["_run"]["world_size"] == 2 and cfg["shuffle"] == "ddp"
    metrics = read_metrics(out)  # rank 0 alone writes
    assert [m["step"] for m in metrics] == [1, 2, 3]  # 48 images / global batch 8
    ckpt = torch.load(find_checkpoint(out), weights_only=True)
    assert int(ckpt["model"]["queue.ptr"]) == 3 * 8  # keys of both ranks (4 + 4 a step)
    assert len(ckpt["rng"]) == 2  # both ranks ran and sent their RNG state
    assert (out / "prior_extractor.pt").is_file()


def test_defaults_work_on_every_builtin_dataset():
    """Issue 15 item 11: `qgnet-train prior --dataset D` with nothing else must pass the config
    checks offline (it failed on resnet50 + --init imagenet)."""
    for name in ("coco", "pascal", "folder"):
        cfg = finalize_config(PriorConfig(dataset=name, workers=0))
        assert (cfg.backbone, cfg.init, cfg.batch_size, cfg.crop) == (
            ("efficientnet_lite0", "imagenet") if name == "folder" else ("resnet50", "none")) + (256, 224)
    cfg = finalize_config(PriorConfig(dataset="demo", workers=0))
    assert (cfg.backbone, cfg.init, cfg.batch_size, cfg.crop, cfg.min_patch_pixels) == (
        "efficientnet_lite0", "imagenet", 64, 128, 96)
    cfg = finalize_config(PriorConfig(dataset="demo", backbone="resnet18", batch_size=8))
    assert (cfg.backbone, cfg.init, cfg.batch_size) == ("resnet18", "none", 8)  # given wins


# ------------------------------------------------------------------------------ relocatable run dir
def test_a_copied_prior_run_is_resumed_and_exported_where_it_is(tiny, tmp_path):
    """Issue 22 §1: `qgnet-train prior --resume <copy>` overwrote the original's checkpoints and
    prior_extractor.pt (the run dir came from the checkpoint's config)."""
    import shutil

    from click.testing import CliRunner

    from cli.train_prior import prior as prior_cli

    kw = dict(epochs=1, ckpt_every=3, queue_size=32, local_queue_size=64)
    a = train_prior(tiny_config(tiny, tmp_path / "A", max_steps=3, **kw))
    b = tmp_path / "B"
    shutil.copytree(a, b)
    before = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    res = CliRunner().invoke(prior_cli, ["--resume", str(b), "--max-steps", "6"])
    assert res.exit_code == 0, res.output
    assert f"run dir: {b}" in res.output
    assert {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()} == before
    assert find_checkpoint(b).name == "step-0000006.pt"
    assert [m["step"] for m in read_metrics(b)] == [1, 2, 3, 4, 5, 6]
    assert torch.load(b / "prior_extractor.pt", weights_only=True)["step"] == 6
    # --export-only of the copy writes the copy's export (or --out's), never the original's
    (b / "prior_extractor.pt").unlink()
    res = CliRunner().invoke(prior_cli, ["--export-only", "--resume", str(b)])
    assert res.exit_code == 0, res.output
    assert (b / "prior_extractor.pt").is_file()
    res = CliRunner().invoke(prior_cli, ["--export-only", "--resume",
                                         str(b / "checkpoints" / "step-0000006.pt"),
                                         "--out", str(tmp_path / "elsewhere")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "elsewhere" / "prior_extractor.pt").is_file()
    assert {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()} == before
    # a moved run never recreates its old folder
    c = tmp_path / "C"
    b.rename(c)
    res = CliRunner().invoke(prior_cli, ["--resume", str(c / "checkpoints" / "step-0000006.pt"),
                                         "--max-steps", "6"])
    assert res.exit_code == 0, res.output
    assert not b.exists() and f"run dir: {c}" in res.output
