"""The GPU check: what a lent GPU must show (issue 20 §2), as one JSON file under ``--out``.

Run by ``bench/device_check.sh`` (the one command of a GPU call; it installs the device kit
first), one group of sections per process, each under its own timeout::

    python -m bench.gpu_check --sections data,prior_step,prior_loader,prior_e2e --append
    python -m bench.gpu_check --summary device-out/gpu_check.json   # the table

Sections (GPU sizes; without CUDA the same code runs at toy sizes, every figure marked
``NOT A GPU FIGURE``, and what needs CUDA is skipped with its reason):

``data``
    The data the check needs, made here from the repository: photos (scikit-image's sample
    photos, random crops at CamVid's 480 x 360, JPEG q90) as a folder dataset, and their
    SLIC store written by the real superpixel stage (:func:`build_superpixel_store`); the
    built-in demo dataset (40 + 20 images) with its mask stores and fold-0 episodes for the
    few-shot trainer. Nothing comes from ``../shared``.
``prior_step``
    Prior pretraining (PriorMoCo, ResNet-50, batch 256, crop 224, loss "both", queues
    65,536, bf16, channels_last) on one synthetic batch already on the device: images/s of
    :func:`model.prior.trainer.train_step`, peak GPU memory.
``prior_loader``
    The default loader alone: the trainer's own ``build_data`` (``--augment-on device``:
    PairedCrop in the workers, uint8, pinned; default workers
    :func:`model.speed.default_loader_workers`), re-made with a sampler that runs across
    epochs so no epoch end drains it. ``workers`` warm-up batches (start-up), then
    ``3 x workers`` timed ones: images/s and images per worker CPU-second.
``prior_e2e``
    The default path end to end: store -> workers -> uint8 -> ``DevicePrefetcher`` ->
    device augmentation -> step. The step is warmed up on synthetic batches first (cuDNN
    autotuning), then a fresh loader: ``workers`` warm-up steps (its first wave of batches),
    ``3 x workers`` timed steps: images/s, the fraction of the time the host waited for
    data, peak GPU memory. Each loader is shut down before the next section starts.
``syncs``
    Host syncs per non-logging step, counted on CUDA by ``torch.cuda.set_sync_debug_mode``
    (one warning per synchronising call): the prior step alone (synthetic batch), and
    whole ``train_prior`` / ``train_fss`` runs of ``a`` and ``b`` steps that log only at
    the end, so setup, logging, checkpoints and export cancel: ``(count_b - count_a) /
    (b - a)``. Target 0.
``parity``
    The loss of ``steps`` prior steps from the same initial weights and the same real
    batches, with every random draw of the step (patch sampling, the key shuffle) made on
    the CPU from one seed: CPU fp32 vs CUDA fp32 (TF32 off) vs CUDA bf16 + channels_last +
    TF32; relative differences.
``fss_train`` / ``fss_eval``
    QGNet built by :func:`model.fss.build.build_model` (ResNet-50 F and Fp, random init,
    dilated, 473 x 473, bins 60/30/15/8, 1 shot): training steps/s at batch 8 through
    :func:`model.fss.build.step`, peak memory; evaluation episodes/s (forward, bf16) at
    batch 1 and 8.

Every backbone is randomly initialised (no downloads; speed does not depend on weights).
A section that fails records its error and traceback; the others still run; the JSON is
rewritten after each section.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.common import command_line, cpu_seconds, git_commit

NOT_GPU = "NOT A GPU FIGURE: toy sizes on CPU, only shows that the check runs"
SECTIONS = ("data", "prior_step", "prior_loader", "prior_e2e", "syncs", "parity", "fss_train",
            "fss_eval")

GPU_SIZES = dict(prior_backbone="resnet50", prior_batch=256, prior_crop=224, queue=65536,
                 step_warmup=5, step_timed=20, photos=1024, photo_hw=(360, 480),
                 parity_backbone="resnet50", parity_batch=32, parity_crop=224, parity_steps=3,
                 parity_min_patch=0,
                 sync_backbone="resnet18", sync_batch=64, sync_crop=224, sync_steps=(2, 6),
                 fss_backbone="resnet50", fss_crop=473, fss_batch=8, fss_warmup=3, fss_steps=15,
                 eval_episodes=48, demo=(40, 20))
TOY_SIZES = dict(prior_backbone="resnet18", prior_batch=8, prior_crop=64, queue=1024,
                 step_warmup=1, step_timed=2, photos=32, photo_hw=(120, 160),
                 parity_backbone="resnet18", parity_batch=8, parity_crop=64, parity_steps=2,
                 parity_min_patch=48,
                 sync_backbone="resnet18", sync_batch=8, sync_crop=64, sync_steps=(1, 2),
                 fss_backbone="efficientnet_lite0", fss_crop=65, fss_batch=2, fss_warmup=1,
                 fss_steps=2, eval_episodes=2, demo=(40, 20))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "colorwheel", "logo", "brick", "grass", "gravel")


# ------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {}


def prior_config(sz: dict, data: dict | None, *, backbone: str | None = None,
                 batch: int | None = None, crop: int | None = None, **kw):
    """The resolved PriorConfig of a check run (workers: the default unless given)."""
    from model.prior.config import PriorConfig, finalize_config

    q = sz["queue"]
    if data:
        kw.update(root=data["root"], patch_store=data["store"])
    return finalize_config(PriorConfig(
        dataset="folder", split="train", backbone=backbone or sz["prior_backbone"],
        init="none", crop=crop or sz["prior_crop"], batch_size=batch or sz["prior_batch"],
        queue_size=q, local_queue_size=q, loss="both", shuffle="split-bn", epochs=1, **kw))


def prior_model(cfg, device: torch.device, *, seed: int = 0):
    from model.prior.config import build_model
    from model.prior.trainer import build_optimizer

    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt, sched = build_optimizer(model, cfg, steps_per_epoch=10_000)
    return model, opt, sched


def synthetic_prior_batch(n: int, crop: int, device: torch.device, *, seed: int = 0) -> dict:
    """Normalised views and superpixel maps (a jittered grid of ~16 x 16 px cells) on device."""
    g = torch.Generator().manual_seed(seed)
    cell = max(crop // 14, 4)
    side = -(-crop // cell)

    def one_map():
        oy, ox = torch.randint(0, cell, (2,), generator=g).tolist()
        yy = (torch.arange(crop) + oy) // cell
        xx = (torch.arange(crop) + ox) // cell
        return (yy.view(-1, 1) * (side + 1) + xx.view(1, -1) + 1).long()  # crop x crop, ids >= 1

    maps_q = torch.stack([one_map() for _ in range(n)])
    maps_k = torch.stack([one_map() for _ in range(n)])
    return {"im_q": torch.randn(n, 3, crop, crop, generator=g).to(device),
            "im_k": torch.randn(n, 3, crop, crop, generator=g).to(device),
            "map_q": maps_q.to(device), "map_k": maps_k.to(device),
            "max_id": int(max(maps_q.max(), maps_k.max()))}


class StreamSampler(torch.utils.data.Sampler):
    """``(epoch, index)`` pairs of successive epochs (each a permutation seeded by
    ``seed + epoch``, as :class:`model.prior.data.EpochSampler`), ``total`` in all: a loader
    that runs through several epochs without the drain at each epoch end."""

    def __init__(self, n: int, total: int, *, seed: int = 0):
        self.n, self.total, self.seed = int(n), int(total), int(seed)

    def __iter__(self):
        def pairs():
            for epoch in itertools.count():
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                    self.seed + epoch)).tolist()
                for i in perm:
                    yield epoch, i

        return itertools.islice(pairs(), self.total)

    def __len__(self) -> int:
        return self.total


def stream_loader(cfg, device: torch.device, *, batches: int):
    """The trainer's DataLoader (``build_data``: dataset, PairedCrop, collate, workers,
    pinning, prefetching), with :class:`StreamSampler` for ``batches`` batches."""
    from model.prior.trainer import build_data
    from model.utils import DistInfo

    pairs, _, loader = build_data(cfg, DistInfo(), device=device)
    return torch.utils.data.DataLoader(
        pairs, batch_size=loader.batch_size,
        sampler=StreamSampler(len(pairs), batches * loader.batch_size),
        drop_last=True, collate_fn=loader.collate_fn, num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers, pin_memory=loader.pin_memory,
        prefetch_factor=loader.prefetch_factor, generator=torch.Generator().manual_seed(0))


def load_data(work: Path) -> dict:
    path = work / "data.json"
    if not path.is_file():
        raise RuntimeError(f"no check data in {work}: run the 'data' section first")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------ sections
def data(sz: dict, device: torch.device, work: Path) -> dict:
    """Photos + their SLIC store (real stage), the demo dataset + masks + episodes."""
    from PIL import Image
    from skimage import color, transform
    from skimage import data as skdata

    from model.speed import available_cores
    from pipeline.datasets import open_dataset
    from pipeline.datasets.demo import generate_demo
    from pipeline.episode_stage import build_episodes
    from pipeline.mask_stage import build_mask_store
    from pipeline.superpixel_stage import build_superpixel_store

    if work.exists():
        shutil.rmtree(work)
    cores = available_cores()
    t0 = time.perf_counter()
    h, w = sz["photo_hw"]
    root = work / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("thing\n")
    rng = np.random.default_rng(0)
    bases, missing = [], []
    for name in PHOTOS:  # each photo at about twice the target size, RGB uint8
        try:
            img = getattr(skdata, name)()
        except Exception as exc:  # noqa: BLE001 - a sample this scikit-image cannot load
            missing.append(f"{name}: {type(exc).__name__}")
            continue
        img = color.gray2rgb(img) if img.ndim == 2 else img[..., :3]
        scale = 2.0 * max(h / img.shape[0], w / img.shape[1])
        bases.append((transform.rescale(img, scale, channel_axis=2, anti_aliasing=True)
                      * 255).astype(np.uint8))
    if not bases:
        raise RuntimeError(f"no scikit-image sample photo could be loaded: {missing}")
    ids = []
    for i in range(sz["photos"]):
        base = bases[i % len(bases)]
        ch, cw = (int(v * rng.uniform(0.5, 1.0)) for v in base.shape[:2])
        ch, cw = max(ch, h // 2), max(cw, w // 2)
        top, left = rng.integers(0, base.shape[0] - ch + 1), rng.integers(0, base.shape[1] - cw + 1)
        crop = Image.fromarray(base[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        name = f"p{i:05d}"
        crop.save(root / "images" / f"{name}.jpg", quality=90)
        ids.append(name)
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "val.txt").write_text(ids[0] + "\n")
    t_photos = time.perf_counter() - t0
    store, report = build_superpixel_store(open_dataset("folder", root), split="train",
                                           method="slic", cache_dir=work / "cache",
                                           workers=cores, progress=False)
    t_store = time.perf_counter() - t0 - t_photos
    demo = generate_demo(work / "demo", n_train=sz["demo"][0], n_val=sz["demo"][1])
    demo_cache = work / "demo-cache"
    for split in ("train", "val"):
        build_mask_store("folder", split=split, cache_dir=demo_cache, root=demo,
                         workers=min(cores, 8), progress=False)
    build_episodes("folder", cache_dir=demo_cache, folds=[0], shots=[1], n_episodes=4,
                   echo=lambda s: None)
    out = {"root": str(root), "store": str(store.path), "photos": sz["photos"],
           "photo_hw": [h, w], "slic_backend": store.attrs.get("backend"),
           "sample_photos": len(bases), "missing_photos": missing,
           "demo_root": str(demo), "demo_cache": str(demo_cache), "cores": cores,
           "photos_s": round(t_photos, 1), "store_s": round(t_store, 1),
           "demo_s": round(time.perf_counter() - t0 - t_photos - t_store, 1)}
    (work / "data.json").write_text(json.dumps(out, indent=1))
    return out


def prior_step(sz: dict, device: torch.device, work: Path) -> dict:
    from model.prior.trainer import train_step

    cfg = prior_config(sz, None)
    model, opt, sched = prior_model(cfg, device)
    batch = synthetic_prior_batch(sz["prior_batch"], sz["prior_crop"], device)
    cl = device.type == "cuda"

    def step():
        return train_step(model, batch, opt, sched, device=device, amp=True, channels_last=cl)

    for _ in range(sz["step_warmup"]):
        step()
    sync(device)
    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(sz["step_timed"]):
        step()
    sync(device)
    s = time.perf_counter() - t0
    n = sz["step_timed"] * sz["prior_batch"]
    return {"backbone": cfg.backbone, "batch": cfg.batch_size, "crop": cfg.crop,
            "warmup_steps": sz["step_warmup"], "timed_steps": sz["step_timed"],
            "images_per_s": round(n / s, 1), "s_per_step": round(s / sz["step_timed"], 4),
            **peak_gb(device)}


def prior_loader(sz: dict, device: torch.device, work: Path) -> dict:
    d = load_data(work)
    cfg = prior_config(sz, d)
    workers = cfg.workers
    warm, timed = max(workers, 1), 3 * max(workers, 1)
    loader = stream_loader(cfg, device, batches=warm + timed)
    pinned = loader.pin_memory
    t_start = time.perf_counter()
    it = iter(loader)
    first = None
    for j in range(warm):  # start-up: every worker's first batch
        next(it)
        if j == 0:
            first = time.perf_counter() - t_start
    pids = [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    for _ in range(timed):
        next(it)
    s = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    del it, loader  # workers shut down before the next section
    n = timed * cfg.batch_size
    return {"workers": workers, "batch": cfg.batch_size, "crop": cfg.crop,
            "warmup_batches": warm, "timed_batches": timed, "first_batch_s": round(first, 2),
            "images_per_s": round(n / s, 1),
            "images_per_worker_cpu_s": round(n / cpu, 1) if cpu > 0 else None,
            "pin_memory": pinned}


def prior_e2e(sz: dict, device: torch.device, work: Path) -> dict:
    from model.prior.device_augment import DevicePrefetcher
    from model.prior.trainer import train_step

    d = load_data(work)
    cfg = prior_config(sz, d)
    model, opt, sched = prior_model(cfg, device)
    cl = device.type == "cuda"
    synth = synthetic_prior_batch(cfg.batch_size, cfg.crop, device)
    for _ in range(sz["step_warmup"]):  # cuDNN autotuning before the loader starts
        train_step(model, synth, opt, sched, device=device, amp=True, channels_last=cl)
    sync(device)
    workers = max(cfg.workers, 1)
    warm, timed = workers, 3 * workers
    loader = stream_loader(cfg, device, batches=warm + timed)
    it = iter(DevicePrefetcher(loader, device))
    for _ in range(warm):  # the loader's first wave (start-up); not counted
        train_step(model, next(it), opt, sched, device=device, amp=True, channels_last=cl)
    sync(device)
    reset_peak(device)
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(timed):
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        train_step(model, batch, opt, sched, device=device, amp=True, channels_last=cl)
    sync(device)
    s = time.perf_counter() - t0
    del it, loader
    return {"backbone": cfg.backbone, "batch": cfg.batch_size, "crop": cfg.crop,
            "workers": cfg.workers, "augment_on": cfg.augment_on, "warmup_steps": warm,
            "timed_steps": timed, "images_per_s": round(timed * cfg.batch_size / s, 1),
            "data_wait_fraction": round(wait / s, 4), **peak_gb(device)}


# --------------------------------------------------------------------- host syncs (CUDA)
class CudaSyncs:
    """Count the synchronising CUDA calls made while active (``set_sync_debug_mode("warn")``
    warns once per call; warnings are recorded, never de-duplicated)."""

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        self._mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self._mode)
        self._catch.__exit__(*exc)

    @property
    def where(self) -> list[str]:
        return [f"{Path(w.filename).name}:{w.lineno}" for w in self.records
                if "synchroniz" in str(w.message)]

    @property
    def count(self) -> int:
        return len(self.where)


class DispatchSyncs:
    """The CPU stand-in of :class:`CudaSyncs` (no CUDA: the rehearsal): a dispatch mode that
    counts the ops that would sync on CUDA (``_local_scalar_dense``, ``equal``, ops of
    data-dependent output size), outside the DataLoader's own code. It exercises the same
    runs; the count that matters is the CUDA one (``tests/model/test_syncs.py`` is the CPU
    test)."""

    OPS = ("aten._local_scalar_dense", "aten.equal", "aten.bincount", "aten.nonzero",
           "aten.masked_select", "aten.unique", "aten._unique", "aten.histc")
    LOADER = ("torch/utils/data", "model/prior/data.py", "model/prior/augment.py",
              "model/fss/data.py", "model/fss/transforms.py")

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(getattr(func, "overloadpacket", func))
                if any(name == o or name.startswith(o + ".") for o in outer.OPS):
                    stack = traceback.extract_stack()[:-1]
                    files = [fr.filename.replace("\\", "/") for fr in stack]
                    if not any(x in f for f in files for x in outer.LOADER):
                        here = [fr for fr in stack if "/torch/" not in fr.filename]
                        outer.where.append(f"{Path(here[-1].filename).name}:{here[-1].lineno}"
                                           if here else name)
                return func(*args, **(kwargs or {}))

        self.where: list[str] = []
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.where)


def _diff(a: list[str], b: list[str]) -> dict[str, int]:
    from collections import Counter

    return dict((Counter(b) - Counter(a)).most_common(8))


def syncs(sz: dict, device: torch.device, work: Path) -> dict:
    from model.fss.trainer import FssConfig, train_fss
    from model.prior.trainer import train_prior, train_step

    d = load_data(work)
    cuda = device.type == "cuda"
    Syncs = CudaSyncs if cuda else DispatchSyncs  # noqa: N806
    out: dict = {"counter": "torch.cuda.set_sync_debug_mode" if cuda else
                 "CPU stand-in (dispatch mode over the ops that sync on CUDA): not the CUDA count"}
    # 1. the prior step alone, on one synthetic batch already on the device
    cfg = prior_config(sz, None, backbone=sz["sync_backbone"], batch=sz["sync_batch"],
                       crop=sz["sync_crop"])
    model, opt, sched = prior_model(cfg, device)
    batch = synthetic_prior_batch(cfg.batch_size, cfg.crop, device)
    for _ in range(2):
        train_step(model, batch, opt, sched, device=device, amp=True, channels_last=cuda)
    sync(device)
    with Syncs() as c:
        for _ in range(5):
            train_step(model, batch, opt, sched, device=device, amp=True, channels_last=cuda)
    out["prior_step_alone"] = {"steps": 5, "syncs_per_step": c.count / 5,
                               "where": _diff([], c.where)}
    del model, opt, sched
    # 2. whole runs of a and b steps (loader, prefetcher, step, window means): the difference
    a, b = sz["sync_steps"]

    def per_step(train, config) -> dict:
        """Syncs of whole runs of a and b steps (``config(steps)`` -> the run's config); the
        difference per step is what a step that does not log costs."""
        where = {}
        for steps in (a, b):
            with Syncs() as c:
                train(config(steps))
            where[steps] = c.where
        return {"steps": [a, b], "syncs": [len(where[a]), len(where[b])],
                "syncs_per_step": (len(where[b]) - len(where[a])) / (b - a),
                "where_extra": _diff(where[a], where[b])}

    out["prior_trainer"] = per_step(train_prior, lambda steps: prior_config(
        sz, d, backbone=sz["sync_backbone"], batch=sz["sync_batch"], crop=sz["sync_crop"],
        max_steps=steps, log_every=1000, ckpt_every=None, progress=False, device=str(device),
        out=str(work / f"prior-run{steps}")))
    out["fss_trainer"] = per_step(train_fss, lambda steps: FssConfig(
        dataset="folder", root=d["demo_root"], cache_dir=d["demo_cache"], fold=0, shot=1,
        use_prior_map=True, prior="imagenet", crop=97, batch_size=2, epochs=50, workers=2,
        val_episodes=0, log_every=1000, progress=False, device=str(device), max_steps=steps,
        out=str(work / f"fss-run{steps}")))
    return out


# --------------------------------------------------------------------- loss parity
@contextlib.contextmanager
def draws_on_cpu(seed: int):
    """Every ``torch.rand`` / ``torch.randperm`` made inside (the step's patch sampling and
    key shuffle) drawn from one CPU generator and moved to the asked device: the same draws
    on every device."""
    g = torch.Generator().manual_seed(seed)
    real_rand, real_randperm = torch.rand, torch.randperm

    def rand(*size, generator=None, device=None, **kw):
        return real_rand(*size, generator=g, **kw).to(device)

    def randperm(n, *, generator=None, device=None, **kw):
        return real_randperm(n, generator=g, **kw).to(device)

    torch.rand, torch.randperm = rand, randperm
    try:
        yield
    finally:
        torch.rand, torch.randperm = real_rand, real_randperm


def parity(sz: dict, device: torch.device, work: Path) -> dict:
    from model.prior.config import build_model
    from model.prior.trainer import build_data, build_optimizer, train_step
    from model.utils import DistInfo

    d = load_data(work)
    cfg = prior_config(sz, d, backbone=sz["parity_backbone"], batch=sz["parity_batch"],
                       crop=sz["parity_crop"], workers=0,  # toy crops: smaller patches
                       **({"min_patch_pixels": sz["parity_min_patch"]}
                          if sz["parity_min_patch"] else {}))
    _, sampler, loader = build_data(cfg, DistInfo(), device=torch.device("cpu"))
    sampler.set_epoch(0)
    batches = list(itertools.islice(iter(loader), sz["parity_steps"]))  # real device-path batches
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    legs = {"cpu_fp32": (torch.device("cpu"), False, False, False)}
    if device.type == "cuda":
        legs["cuda_fp32"] = (device, False, False, False)
        legs["cuda_bf16_cl_tf32"] = (device, True, True, True)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    losses: dict[str, list[dict[str, float]]] = {}
    for name, (dev, amp, cl, allow_tf32) in legs.items():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
        model = build_model(cfg)
        model.load_state_dict(state)
        model = model.to(dev).train()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt, sched = build_optimizer(model, cfg, steps_per_epoch=100)
        rows = []
        with draws_on_cpu(seed=1):
            for b in batches:
                out = train_step(model, b, opt, sched, device=dev, amp=amp, channels_last=cl)
                rows.append({k: float(out[k]) for k in ("loss", "loss_global", "loss_local")})
        losses[name] = rows
        del model, opt, sched
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    ref = losses["cpu_fp32"]
    rel = {name: [max(abs(r[k] - c[k]) / max(abs(c[k]), 1e-12) for k in c)
                  for r, c in zip(rows, ref, strict=True)]
           for name, rows in losses.items() if name != "cpu_fp32"}
    out = {"backbone": cfg.backbone, "batch": cfg.batch_size, "crop": cfg.crop,
           "steps": len(batches), "losses": losses,
           "max_rel_diff_vs_cpu": {k: max(v) for k, v in rel.items()},
           "rel_diff_per_step": rel}
    if device.type != "cuda":
        out["skipped"] = "the CUDA legs need CUDA (the CPU leg ran)"
    return out


# --------------------------------------------------------------------- few-shot
def fss_model(sz: dict, device: torch.device):
    from model.fss.build import build_model
    from model.speed import channels_last_on_cuda

    name = sz["fss_backbone"]
    meta = {"backbone": name, "weights": "none", "use_prior_map": True,
            "prior": "random-init", "prior_backbone": name, "bins": "auto",
            "crop": sz["fss_crop"], "reduce_dim": 256}
    torch.manual_seed(0)
    model = build_model(meta, stems={"backbone": "standard", "prior_backbone": "standard"})
    return channels_last_on_cuda(model.to(device), device), meta


def synthetic_episodes(n: int, crop: int, device: torch.device, *, shot: int = 1) -> dict:
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(n, shot, crop, crop)
    masks[..., crop // 4: 3 * crop // 4, crop // 3: 2 * crop // 3] = 1
    label = torch.zeros(n, crop, crop, dtype=torch.long)
    label[:, crop // 3: 2 * crop // 3, crop // 4: 3 * crop // 4] = 1
    return {"query": torch.randn(n, 3, crop, crop, generator=g).to(device),
            "supports": torch.randn(n, shot, 3, crop, crop, generator=g).to(device),
            "support_masks": masks.to(device), "label": label.to(device)}


def fss_train(sz: dict, device: torch.device, work: Path) -> dict:
    from model.fss import build

    model, meta = fss_model(sz, device)
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.025, momentum=0.9, weight_decay=1e-4)
    batch = synthetic_episodes(sz["fss_batch"], sz["fss_crop"], device)
    for _ in range(sz["fss_warmup"]):
        build.step(model, batch, device=device, amp=True, optimizer=opt)
    sync(device)
    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(sz["fss_steps"]):
        build.step(model, batch, device=device, amp=True, optimizer=opt)
    sync(device)
    s = time.perf_counter() - t0
    return {"backbone": meta["backbone"], "crop": meta["crop"], "batch": sz["fss_batch"],
            "shot": 1, "timed_steps": sz["fss_steps"], "steps_per_s": round(sz["fss_steps"] / s, 3),
            "images_per_s": round(sz["fss_steps"] * sz["fss_batch"] / s, 2), **peak_gb(device)}


def fss_eval(sz: dict, device: torch.device, work: Path) -> dict:
    from model.utils import autocast

    model, meta = fss_model(sz, device)
    model.eval()
    out = {"backbone": meta["backbone"], "crop": meta["crop"], "shot": 1}
    for batch_size in (1, sz["fss_batch"]):
        b = synthetic_episodes(batch_size, sz["fss_crop"], device)
        calls = max(sz["eval_episodes"] // batch_size, 2)

        @torch.no_grad()
        def run(b=b):
            with autocast(device, enabled=True):
                model(b["query"], b["supports"], b["support_masks"])

        for _ in range(2):
            run()
        sync(device)
        reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        sync(device)
        s = time.perf_counter() - t0
        out[f"batch_{batch_size}"] = {"episodes_per_s": round(calls * batch_size / s, 2),
                                      **peak_gb(device)}
    return out


# ------------------------------------------------------------------------------ summary
def summary(result: dict) -> str:
    """One markdown table of the figures that matter (and every section's status)."""
    secs = result.get("sections", {})
    rows = []

    def row(section, what, value):
        rows.append(f"| {section} | {what} | {value} |")

    for name in SECTIONS:
        r = secs.get(name)
        if r is None:
            row(name, "status", "not run")
            continue
        if "error" in r:
            row(name, "status", f"FAILED: {r['error'][:120]}")
            continue
        if "skipped" in r and name != "parity":
            row(name, "status", f"skipped: {r['skipped']}")
            continue
        took = f"{r.get('section_s', 0):.0f} s"
        if name == "data":
            row(name, "photos / SLIC store / demo", f"{r['photos']} photos {r['photo_hw'][1]}x"
                f"{r['photo_hw'][0]} in {r['photos_s']} s; store ({r['slic_backend']}) "
                f"{r['store_s']} s; demo {r['demo_s']} s ({took})")
        elif name == "prior_step":
            row(name, f"{r['backbone']} b{r['batch']} c{r['crop']} synthetic step",
                f"{r['images_per_s']} images/s, peak {r.get('peak_gpu_gb', '-')} GB ({took})")
        elif name == "prior_loader":
            row(name, f"loader alone, {r['workers']} workers, {r['timed_batches']} timed batches",
                f"{r['images_per_s']} images/s, {r['images_per_worker_cpu_s']} images per "
                f"worker CPU-s ({took})")
        elif name == "prior_e2e":
            row(name, f"store -> workers -> device aug -> step, {r['timed_steps']} timed steps",
                f"{r['images_per_s']} images/s, data wait {100 * r['data_wait_fraction']:.1f} %, "
                f"peak {r.get('peak_gpu_gb', '-')} GB ({took})")
        elif name == "syncs":
            label = "" if r.get("counter", "").startswith("torch.cuda") else " (CPU stand-in)"
            for k in ("prior_step_alone", "prior_trainer", "fss_trainer"):
                row(name, f"{k} syncs per non-logging step{label}", f"{r[k]['syncs_per_step']:g}"
                    + (f" at {r[k].get('where_extra') or r[k].get('where')}"
                       if r[k]["syncs_per_step"] else ""))
        elif name == "parity":
            ref = r["losses"]["cpu_fp32"][0]["loss"]
            diffs = ", ".join(f"{k} {v:.2e}" for k, v in r["max_rel_diff_vs_cpu"].items())
            row(name, f"loss rel. diff vs CPU fp32 ({r['steps']} steps, {r['backbone']})",
                (diffs or r.get("skipped", "")) + f" (CPU step-1 loss {ref:.4f})")
        elif name == "fss_train":
            row(name, f"QGNet {r['backbone']} {r['crop']} b{r['batch']} train",
                f"{r['steps_per_s']} steps/s, peak {r.get('peak_gpu_gb', '-')} GB ({took})")
        elif name == "fss_eval":
            vals = "; ".join(f"batch {k[6:]}: {v['episodes_per_s']} episodes/s"
                             for k, v in r.items() if k.startswith("batch_"))
            row(name, f"QGNet {r['backbone']} {r['crop']} eval", f"{vals} ({took})")
    head = (f"GPU check on {result.get('device')} (torch {result.get('torch')}, CUDA "
            f"{result.get('cuda')}, {result.get('cpu_cores')} cores)"
            + ("" if result.get("gpu_figure") else f" -- {NOT_GPU}"))
    return "\n".join([head, "", "| section | what | result |", "|---|---|---|", *rows]) + "\n"


# ------------------------------------------------------------------------------ main
def default_out() -> str:
    return os.environ.get("OUT") or "device-out"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=default_out(),
                    help="folder of gpu_check.json (default $OUT when set, else ./device-out)")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                   "qgnet-gpu-check"),
                    help="where the check's data is made (not sent back)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:i]")
    ap.add_argument("--toy", action="store_true", help="toy sizes even on CUDA (a quick try)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--append", action="store_true",
                    help="add to an existing gpu_check.json instead of starting a new one")
    ap.add_argument("--summary", metavar="JSON",
                    help="print the table of a finished check (and write summary.md beside it)")
    args = ap.parse_args(argv)
    if args.summary:
        result = json.loads(Path(args.summary).read_text())
        text = summary(result)
        Path(args.summary).with_name("summary.md").write_text(text)
        print(text)
        return result

    from model.speed import available_cores, configure_cuda, default_loader_workers
    from model.utils import pick_device

    device = pick_device(args.device)
    gpu = device.type == "cuda"
    sz = dict(TOY_SIZES if (args.toy or not gpu) else GPU_SIZES)
    configure_cuda(device)
    out_path = Path(args.out) / "gpu_check.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if args.append and out_path.is_file():
        result = json.loads(out_path.read_text())
    result.update({
        "device": (torch.cuda.get_device_name(device) if gpu
                   else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"),
        "gpu_figure": gpu and not args.toy, "cpu_cores": os.cpu_count(),
        "available_cores": available_cores(), "default_workers": default_loader_workers(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "commit": git_commit(), "command": command_line(),
        "note": "random-init backbones (no downloads); bf16 autocast, channels_last, "
                "cudnn.benchmark and TF32 on CUDA", "sizes": sz})
    result.setdefault("sections", {})
    if not result["gpu_figure"]:
        result["warning"] = NOT_GPU
    work = Path(args.work)
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        t0 = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            res = globals()[name](sz, device, work)
        except Exception as exc:  # noqa: BLE001 - a failed section must not lose the others
            res = {"error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=8)}
            print(res["traceback"], file=sys.stderr)
        res["section_s"] = round(time.perf_counter() - t0, 1)
        if not result["gpu_figure"]:
            res["warning"] = NOT_GPU
        result["sections"][name] = res
        out_path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"gpu_check: {name}: {json.dumps(res)[:600]}", file=sys.stderr, flush=True)
        if gpu:
            torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
