"""One command for a lent GPU: the speed figures of issue 13, written as JSON.

On CUDA (the real check, sized to finish in well under 8 minutes on one H200)::

    PYTHONPATH=$PWD python bench/gpu_check.py --out bench/results/gpu_check.json

1. ``prior_synthetic``: prior pretraining (PriorMoCo, ResNet-50, batch 256, crop 224,
   loss "both", queues 65,536, bf16, channels_last) on batches already on the device:
   images/s of :func:`model.prior.trainer.train_step`, peak memory.
2. ``loader_per_worker``: the prior loader (PriorPairs + PairedAugment + collate: JPEG
   decode, two MoCo-v2 views, patch maps) with 1 worker, images/s; and with all cores.
3. ``prior_real_loader``: the same training step fed by that loader (all cores, pinned
   memory): images/s, and the fraction of time spent waiting for data.
4. ``fss_train``: QGNet (ResNet-50 F and Fp, dilated, 473 x 473, batch 8, 1 shot, bins
   60/30/15/8) training steps/s through :func:`model.fss.evaluate.step`, peak memory.
5. ``fss_eval``: QGNet forward-only episodes/s at 473, batch 1 (the evaluator today) and
   batch 8.

Every backbone is randomly initialised: ImageNet weights are not available offline, and
speed does not depend on the weights. The images of the loader check are scikit-image's
sample photos (longer side 500, JPEG) with SLIC maps computed here, so no dataset is
needed. Without CUDA the same code runs at toy size (ResNet-18 crop 64 for the prior,
EfficientNet-Lite0 crop 65 for few-shot) and every section is marked
``"NOT A GPU FIGURE"``: those numbers only show that the script works.

Each section is timed after warm-up steps (cuDNN autotuning, oneDNN primitives) with a
device synchronisation around the timed steps; a section that fails records its error
and the others still run; the JSON is rewritten after each section.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NOT_GPU = "NOT A GPU FIGURE: toy sizes on CPU, only shows that the script runs"

GPU_SIZES = dict(prior_backbone="resnet50", prior_batch=256, prior_crop=224, queue=65536,
                 prior_warmup=5, prior_steps=20, loader_images=384, loader_batch=32,
                 real_steps=8, fss_backbone="resnet50", fss_crop=473, fss_batch=8,
                 fss_warmup=3, fss_steps=15, eval_episodes=40, photos=16)
TOY_SIZES = dict(prior_backbone="resnet18", prior_batch=8, prior_crop=64, queue=1024,
                 prior_warmup=1, prior_steps=2, loader_images=16, loader_batch=4,
                 real_steps=2, fss_backbone="efficientnet_lite0", fss_crop=65, fss_batch=2,
                 fss_warmup=1, fss_steps=2, eval_episodes=4, photos=6)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "colorwheel", "logo")


# ------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    # CPU: the process's peak resident memory so far (not per section)
    return {"process_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def timed(fn, *, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``fn`` after ``warmup`` calls (synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - t0


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


def prior_model(sz: dict, device: torch.device):
    from model.prior.config import PriorConfig, build_model
    from model.prior.trainer import build_optimizer

    cfg = PriorConfig(dataset="bench", backbone=sz["prior_backbone"], init="none",
                      crop=sz["prior_crop"], batch_size=sz["prior_batch"], lr=0.03,
                      queue_size=sz["queue"], local_queue_size=sz["queue"], loss="both",
                      shuffle="split-bn")
    model = build_model(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt, sched = build_optimizer(model, cfg, steps_per_epoch=10_000)
    return model, opt, sched


# ------------------------------------------------------------------------------ sections
def prior_synthetic(sz: dict, device: torch.device) -> dict:
    from model.prior.trainer import train_step

    model, opt, sched = prior_model(sz, device)
    batch = synthetic_prior_batch(sz["prior_batch"], sz["prior_crop"], device)
    reset_peak(device)
    cl = device.type == "cuda"
    s = timed(lambda: train_step(model, batch, opt, sched, device=device, amp=True,
                                 channels_last=cl),
              warmup=sz["prior_warmup"], steps=sz["prior_steps"], device=device)
    n = sz["prior_steps"] * sz["prior_batch"]
    return {"backbone": sz["prior_backbone"], "batch": sz["prior_batch"], "crop": sz["prior_crop"],
            "steps": sz["prior_steps"], "images_per_s": n / s, "s_per_step": s / sz["prior_steps"],
            **peak_gb(device)}


def make_photo_dataset(base: Path, n: int, *, side: int) -> tuple[Path, Path, list[str]]:
    """scikit-image photos (longer side ``side``, JPEG, and their mirror images) as a folder
    dataset, with a SLIC-100 superpixel store written through ShardedStore."""
    from PIL import Image
    from skimage import color, data, transform
    from skimage.segmentation import slic

    from pipeline.store import ShardedStore

    root = base / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("thing\n")
    ids, maps = [], []
    for i in range(n):
        img = getattr(data, PHOTOS[(i // 2) % len(PHOTOS)])()
        if img.ndim == 2:
            img = color.gray2rgb(img)
        img = img[..., :3]
        scale = side / max(img.shape[:2])
        img = (transform.resize(img, (round(img.shape[0] * scale), round(img.shape[1] * scale)),
                                anti_aliasing=True) * 255).astype(np.uint8)
        if i % 2:
            img = np.ascontiguousarray(img[:, ::-1])
        name = f"photo{i:03d}"
        Image.fromarray(img).save(root / "images" / f"{name}.jpg", quality=90)
        ids.append(name)
        maps.append(slic(img, n_segments=100, compactness=10, start_label=1).astype(np.uint16))
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "val.txt").write_text(ids[0] + "\n")
    store_path = base / "slic-train.zarr"
    hw = np.array([m.shape for m in maps])
    store = ShardedStore.create(store_path, ids=ids, hw=hw, maps="labels", dtype="uint16",
                                attrs={"kind": "superpixels", "dataset": "folder",
                                       "split": "train", "method": "slic"},
                                extras={"n_segments": ((), "int32")}, shard_size=16)
    for k in range(store.n_shards):
        a, b = store.shard_range(k)
        block = maps[a:b]
        store.write_shard(k, block, extras={"n_segments": np.array([int(m.max()) for m in block],
                                                                   np.int32)}, failures=[])
    return root, store_path, ids


def _pairs(sz: dict, root: Path, store_path: Path, ids: list[str]):
    from model.prior.augment import PairedAugment
    from model.prior.data import PriorPairs
    from pipeline.datasets import open_dataset

    ds = open_dataset("folder", root)
    return PriorPairs(ds, store_path, ids, augment=PairedAugment(size=sz["prior_crop"],
                                                                 scale=(0.2, 1.0)), seed=0)


def _loader(pairs, *, batch: int, n_batches: int, workers: int, device: torch.device):
    from model.prior.data import collate

    sampler = torch.utils.data.RandomSampler(pairs, replacement=True,
                                             num_samples=batch * n_batches,
                                             generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(
        pairs, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=collate,
        num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None)


def loader_per_worker(sz: dict, device: torch.device, data) -> dict:
    pairs = _pairs(sz, *data)
    out = {"crop": sz["prior_crop"], "images": "scikit-image photos, longer side "
           f"{500 if device.type == 'cuda' else 160}, JPEG q90, SLIC-100 maps"}
    cores = os.cpu_count() or 1
    for workers in sorted({1, cores}):
        b = sz["loader_batch"]
        n_batches = max(sz["loader_images"] // b, 2) * (1 if workers == 1 else min(workers, 4))
        it = iter(_loader(pairs, batch=b, n_batches=n_batches + 1, workers=workers, device=device))
        next(it)  # worker start-up and the first batch are not counted
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        s = time.perf_counter() - t0
        ips = n_batches * b / s
        out[f"workers_{workers}"] = {"images_per_s": ips, "images_per_s_per_worker": ips / workers,
                                     "ms_per_image_per_worker": 1e3 * workers / ips}
        del it
    return out


def prior_real_loader(sz: dict, device: torch.device, data) -> dict:
    from model.prior.trainer import train_step

    model, opt, sched = prior_model(sz, device)
    pairs = _pairs(sz, *data)
    workers = os.cpu_count() or 1
    steps = sz["real_steps"]
    it = iter(_loader(pairs, batch=sz["prior_batch"], n_batches=steps + 2, workers=workers,
                      device=device))
    cl = device.type == "cuda"
    for _ in range(2):  # warm-up: worker start-up, cuDNN autotuning
        train_step(model, next(it), opt, sched, device=device, amp=True, channels_last=cl)
    sync(device)
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        train_step(model, batch, opt, sched, device=device, amp=True, channels_last=cl)
    sync(device)
    s = time.perf_counter() - t0
    return {"backbone": sz["prior_backbone"], "batch": sz["prior_batch"], "workers": workers,
            "steps": steps, "images_per_s": steps * sz["prior_batch"] / s,
            "data_wait_fraction": wait / s, **peak_gb(device)}


def fss_model(sz: dict, device: torch.device):
    from model.backbones import build_backbone
    from model.fss.qgnet import QGNet
    from model.speed import channels_last_on_cuda

    bb = build_backbone(sz["fss_backbone"], weights="none", dilated=True)
    pbb = build_backbone(sz["fss_backbone"], weights="none", dilated=True)
    bins = (60, 30, 15, 8) if sz["fss_crop"] == 473 else None
    torch.manual_seed(0)
    model = QGNet(backbone=bb, prior_backbone=pbb, pyramid_bins=bins,
                  train_size=None if bins else sz["fss_crop"]).to(device)
    return channels_last_on_cuda(model, device)


def synthetic_episodes(n: int, crop: int, device: torch.device, *, shot: int = 1) -> dict:
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(n, shot, crop, crop)
    masks[..., crop // 4: 3 * crop // 4, crop // 3: 2 * crop // 3] = 1
    label = torch.zeros(n, crop, crop, dtype=torch.long)
    label[:, crop // 3: 2 * crop // 3, crop // 4: 3 * crop // 4] = 1
    return {"query": torch.randn(n, 3, crop, crop, generator=g).to(device),
            "supports": torch.randn(n, shot, 3, crop, crop, generator=g).to(device),
            "support_masks": masks.to(device), "label": label.to(device)}


def fss_train(sz: dict, device: torch.device) -> dict:
    from model.fss import build

    model = fss_model(sz, device)
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.025, momentum=0.9, weight_decay=1e-4)
    batch = synthetic_episodes(sz["fss_batch"], sz["fss_crop"], device)
    reset_peak(device)
    s = timed(lambda: build.step(model, batch, device=device, amp=True, optimizer=opt),
              warmup=sz["fss_warmup"], steps=sz["fss_steps"], device=device)
    return {"backbone": sz["fss_backbone"], "crop": sz["fss_crop"], "batch": sz["fss_batch"],
            "shot": 1, "steps": sz["fss_steps"], "steps_per_s": sz["fss_steps"] / s,
            "images_per_s": sz["fss_steps"] * sz["fss_batch"] / s, **peak_gb(device)}


def fss_eval(sz: dict, device: torch.device) -> dict:
    from model.utils import autocast

    model = fss_model(sz, device)
    model.eval()
    out = {"backbone": sz["fss_backbone"], "crop": sz["fss_crop"], "shot": 1}
    for batch_size in (1, sz["fss_batch"]):
        b = synthetic_episodes(batch_size, sz["fss_crop"], device)
        n_calls = max(sz["eval_episodes"] // batch_size, 2)

        @torch.no_grad()
        def run(b=b):
            with autocast(device, enabled=True):
                model(b["query"], b["supports"], b["support_masks"])

        reset_peak(device)
        s = timed(run, warmup=2, steps=n_calls, device=device)
        out[f"batch_{batch_size}"] = {"episodes_per_s": n_calls * batch_size / s, **peak_gb(device)}
    return out


# ------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:i]")
    ap.add_argument("--toy", action="store_true", help="toy sizes even on CUDA (a quick try)")
    ap.add_argument("--sections", default="prior_synthetic,loader_per_worker,prior_real_loader,"
                    "fss_train,fss_eval")
    args = ap.parse_args(argv)

    from model.speed import configure_cuda
    from model.utils import pick_device

    device = pick_device(args.device)
    gpu = device.type == "cuda"
    sz = dict(TOY_SIZES if (args.toy or not gpu) else GPU_SIZES)
    configure_cuda(device)
    result: dict = {
        "device": (torch.cuda.get_device_name(device) if gpu
                   else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"),
        "gpu_figure": gpu and not args.toy,
        "cpu_cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "note": ("random-init backbones (no ImageNet weights offline); bf16 autocast, "
                 "channels_last, cudnn.benchmark and TF32 on CUDA"),
        "sizes": sz, "sections": {}}
    if not result["gpu_figure"]:
        result["warning"] = NOT_GPU
        print(f"\n*** {NOT_GPU} ***\n", file=sys.stderr)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        data = None
        for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
            t0 = time.perf_counter()
            try:
                fn = globals()[name]
                if name in ("loader_per_worker", "prior_real_loader"):
                    if data is None:
                        data = make_photo_dataset(Path(tmp), sz["photos"], side=500 if gpu else 160)
                    res = fn(sz, device, data)
                else:
                    res = fn(sz, device)
            except Exception as exc:  # a failed section must not lose the others' figures
                res = {"error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc(limit=6)}
            res["section_s"] = time.perf_counter() - t0
            if not result["gpu_figure"]:
                res["warning"] = NOT_GPU
            result["sections"][name] = res
            result["total_s"] = time.perf_counter() - t_start
            out_path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name}: {json.dumps(res)}", file=sys.stderr)
            if gpu:
                torch.cuda.empty_cache()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
