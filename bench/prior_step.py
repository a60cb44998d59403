"""Prior pretraining throughput: the training step (global-only vs global + local) and the
DataLoader (JPEG + patch map + two augmentations) on this machine.

For each backbone, in one process and on the same pre-loaded batches:

* ``step``: images/s of :func:`model.prior.trainer.train_step` with ``loss="global"`` and
  ``loss="both"`` (``warmup`` untimed steps, then ``steps`` timed ones); the ratio
  ``both / global`` of the step times is the cost of the local term (target <= 1.25);
* ``loader``: images/s of the DataLoader alone (``--workers`` workers, persistent);
* ``pipeline``: loader + step together (``loss="both"``), with the fraction of the time
  spent waiting for data.

Prints the table; ``--out`` merges the record (one per mode and patch method) into the
results file. Example::

    python -m bench.prior_step --root /tmp/camvid/folder --store .../slic-train-*.zarr \
        --backbones efficientnet_lite0,resnet18 --crop 160 --batch 32 --workers 2 \
        --out bench/results/prior_step.json

``--loader-only`` measures the loader alone, both ``--augment-on`` paths in the same run
(issue 13 §1-§2, issue 14): images/s of a DataLoader with ``--workers`` workers and images
per CPU-second of its workers (= per core), the CPU milliseconds per image by part (decode,
patch-map read, crop/resize, jitter, grayscale, blur, normalise, collate; one thread, in
process), the bytes per batch the workers ship (scaled to ``--ship-batch``), and images/s
of the device half on ``--device`` (batch ``--ship-batch`` on CUDA), e.g.::

    python -m bench.prior_step --loader-only --root /tmp/camvid/folder \
        --store .../slic-train-*.zarr --crop 224 --batch 32 --workers 1 --device cpu
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bench.common import add_out_argument, cpu_seconds, machine, markdown_table, write_result
from model.prior.config import PriorConfig, build_model, finalize_config
from model.prior.device_augment import DevicePrefetcher
from model.prior.trainer import build_data, build_optimizer, train_step
from model.utils import DistInfo, pick_device

PATHS = ("cpu", "device")  # --augment-on values, the old path first


def config(args, backbone: str, loss: str, workers: int, augment_on: str = "device"
           ) -> PriorConfig:
    return finalize_config(PriorConfig(
        augment_on=augment_on,
        dataset=args.dataset, root=args.root, patch_store=args.store, split=args.split,
        patches=args.patches,
        backbone=backbone, init="none", crop=args.crop, batch_size=args.batch, loss=loss,
        queue_size=args.queue, local_queue_size=args.queue, workers=workers,
        device=args.device, epochs=1, seed=0, out="/tmp/unused"))


def time_steps(cfg: PriorConfig, batches, device, *, warmup: int) -> float:
    """Seconds per step (mean over the timed steps)."""
    torch.manual_seed(0)
    model = build_model(cfg, weights="none").to(device).train()
    opt, sched = build_optimizer(model, cfg, steps_per_epoch=len(batches))
    for b in batches[:warmup]:
        train_step(model, b, opt, sched, device=device, amp=cfg.amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in batches[warmup:]:
        train_step(model, b, opt, sched, device=device, amp=cfg.amp)
    if device.type == "cuda":  # train_step no longer syncs (it returns device tensors)
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / (len(batches) - warmup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="folder")
    ap.add_argument("--root", required=True)
    ap.add_argument("--store", required=True, help="superpixel store of the split")
    ap.add_argument("--split", default="train")
    ap.add_argument("--patches", default="slic", choices=["slic", "felzenszwalb"],
                    help="method of --store")
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet18")
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--device", default="auto")
    add_out_argument(ap, "prior_step")
    ap.add_argument("--augment-on", default="device", choices=PATHS,
                    help="loader path of the step / pipeline measurements")
    ap.add_argument("--loader-only", action="store_true",
                    help="only the loader: both --augment-on paths, images/s, CPU ms per "
                         "image by part, bytes per batch")
    ap.add_argument("--parts-images", type=int, default=24,
                    help="--loader-only: images timed part by part")
    ap.add_argument("--ship-batch", type=int, default=256,
                    help="--loader-only: batch the bytes per batch are reported for")
    ap.add_argument("--rounds", type=int, default=2,
                    help="--loader-only: alternate the two paths this many times (best kept)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    dinfo = DistInfo()
    if args.loader_only:
        return loader_only(args, device, dinfo)
    n = args.warmup + args.steps

    # the loader alone
    cfg = config(args, args.backbones.split(",")[0], "both", args.workers, args.augment_on)
    _, sampler, loader = build_data(cfg, dinfo, device=device)
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # workers started
    t = time.perf_counter()
    batches = [next(it) for _ in range(args.loader_batches)]
    loader_ips = args.loader_batches * args.batch / (time.perf_counter() - t)
    while len(batches) < n:
        batches.append(next(it))
    del it
    print(f"loader: {loader_ips:.1f} images/s ({args.workers} workers)", flush=True)

    rows = []
    for backbone in args.backbones.split(","):
        sec = {}
        for loss in ("global", "both"):
            sec[loss] = time_steps(config(args, backbone, loss, 0), batches[:n], device,
                                   warmup=args.warmup)
            print(f"{backbone} {loss}: {args.batch / sec[loss]:.1f} images/s", flush=True)
        # loader + step together
        cfg = config(args, backbone, "both", args.workers, args.augment_on)
        torch.manual_seed(0)
        model = build_model(cfg, weights="none").to(device).train()
        opt, sched = build_optimizer(model, cfg, steps_per_epoch=100)
        _, sampler, loader = build_data(cfg, dinfo, device=device)
        sampler.set_epoch(1)
        wait = total = 0.0
        it = iter(DevicePrefetcher(loader, device))
        for i in range(n):
            t0 = time.perf_counter()
            b = next(it)
            t1 = time.perf_counter()
            train_step(model, b, opt, sched, device=device, amp=cfg.amp)
            if i >= args.warmup:
                wait, total = wait + t1 - t0, total + time.perf_counter() - t0
        del it
        rows.append({"backbone": backbone, "crop": args.crop, "batch": args.batch,
                     "global_ips": args.batch / sec["global"], "both_ips": args.batch / sec["both"],
                     "local_cost": sec["both"] / sec["global"],
                     "pipeline_ips": args.steps * args.batch / total,
                     "data_wait": wait / total, "loader_ips": loader_ips})
        print(json.dumps(rows[-1]), flush=True)

    table = markdown_table(
        ["backbone", "global-only img/s", "global+local img/s", "local cost (time ratio)",
         "loader img/s", "loader+step img/s", "data-wait"],
        [[r["backbone"], f"{r['global_ips']:.1f}", f"{r['both_ips']:.1f}", f"{r['local_cost']:.2f}",
          f"{r['loader_ips']:.1f}", f"{r['pipeline_ips']:.1f}", f"{100 * r['data_wait']:.0f}%"]
         for r in rows])
    print(f"{machine()}, {device}; crop {args.crop}, batch {args.batch}, queues {args.queue}, "
          f"{args.steps} timed steps after {args.warmup} warm-up; loader {args.workers} workers.\n")
    print(table)
    write_result(args.out, {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}},
                 key=f"step, {args.dataset}, {args.patches}, crop {args.crop}, {device}", table=table)


# ------------------------------------------------------------------------------ loader only
def loader_ips(args, device, dinfo, augment_on: str) -> tuple[float, dict]:
    """Images/s of the DataLoader (``--workers`` workers, persistent, first batch untimed)
    and one batch (for its size)."""
    cfg = config(args, "resnet18", "both", args.workers, augment_on)
    _, sampler, loader = build_data(cfg, dinfo, device=device)
    sampler.set_epoch(0)
    it = iter(loader)
    first = next(it)  # workers started
    pids = [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    t = time.perf_counter()
    for _ in range(args.loader_batches):
        next(it)
    ips = args.loader_batches * args.batch / (time.perf_counter() - t)
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    del it, loader
    # images per CPU-second of the workers: the per-core rate, robust to a loaded machine
    # (prefetching makes the workers run a little ahead of the timed batches: a bound below)
    per_cpu = args.loader_batches * args.batch / cpu if cpu > 0 else float("nan")
    return ips, per_cpu, first


def batch_bytes(batch: dict, *, per: int, to: int) -> int:
    """Bytes of the tensors of a ``per``-sample batch, scaled to ``to`` samples."""
    return sum(v.nbytes for v in batch.values() if torch.is_tensor(v)) * to // per


def time_parts(args, dinfo, device, n: int) -> dict[str, dict[str, float]]:
    """CPU ms per image (two views) by part (process CPU time), one torch thread, in process,
    both paths on the same images and seeds. ``device-side`` is the batched device work run on the CPU (what
    the GPU takes over; not a loader cost)."""
    import numpy as np
    import torchvision.transforms.functional as TF
    from torch.utils.data import default_collate
    from torchvision.transforms import InterpolationMode

    from model.prior.augment import PairedCrop, photometric
    from model.prior.data import sample_seed
    from model.prior.device_augment import augment_views, plan_views

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clock = time.process_time  # CPU time of this process (zarr reads in its own thread)
    cfg = config(args, "resnet18", "both", 0, "cpu")
    pairs, _, _ = build_data(cfg, dinfo, device=device)
    aug = pairs.augment
    crop = PairedCrop(size=aug.size, scale=aug.scale)
    acc = {"cpu": {}, "device": {}}

    def add(path, part, dt):
        acc[path][part] = acc[path].get(part, 0.0) + dt

    samples = {"cpu": [], "device": []}
    for j in range(n):
        i = j % len(pairs)
        t0 = clock()
        image = pairs.dataset.load_image(pairs.ids[i])
        t1 = clock()
        pmap = pairs.store.get(int(pairs.rows[i]))
        t2 = clock()
        for path in PATHS:
            add(path, "decode", t1 - t0)
            add(path, "patch-map read", t2 - t1)
        # the CPU path, part by part (the same operations PairedAugment runs)
        g = torch.Generator().manual_seed(sample_seed(0, 0, i))
        views = {}
        for v in ("q", "k"):
            t = clock()
            p = aug.draw(image.shape[0], image.shape[1], g)
            m = torch.from_numpy(aug._map_view(pmap, p, flip=True).astype(np.int64))
            t_a = clock()
            top, left, h, w = p.crop
            img = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w]))
            img = img.permute(2, 0, 1).float().div_(255)
            img = TF.resize(img, [aug.size] * 2, interpolation=InterpolationMode.BILINEAR,
                            antialias=True).clamp_(0, 1)
            img = img.flip(-1) if p.flip else img
            t_b = clock()
            img = photometric(img, p._replace(gray=False, sigma=0.0))
            t_c = clock()
            img = photometric(img, p._replace(jitter=False, sigma=0.0))
            t_d = clock()
            img = photometric(img, p._replace(jitter=False, gray=False))
            t_e = clock()
            img = (img - aug.mean) / aug.std
            t_f = clock()
            for part, dt in (("draw + map view", t_a - t), ("crop/resize (+flip)", t_b - t_a),
                             ("colour jitter", t_c - t_b), ("grayscale", t_d - t_c),
                             ("blur", t_e - t_d), ("normalise", t_f - t_e)):
                add("cpu", part, dt)
            views[v] = (img.contiguous(), m)
        samples["cpu"].append({"im_q": views["q"][0], "im_k": views["k"][0],
                               "map_q": views["q"][1], "map_k": views["k"][1]})
        # the device path's worker half
        g = torch.Generator().manual_seed(sample_seed(0, 0, i))
        t = clock()
        sq, sk = crop(image, pmap, generator=g), crop(image, pmap, generator=g)
        add("device", "draw + map view + crop/resize (uint8)", clock() - t)
        samples["device"].append({"im_q": sq[0], "im_k": sk[0], "map_q": sq[1], "map_k": sk[1],
                                  "aug_q": sq[2], "aug_k": sk[2]})
    for path in PATHS:
        t = clock()
        batch = default_collate(samples[path])
        add(path, "collate", clock() - t)
    t = clock()
    for v in ("q", "k"):
        augment_views(batch[f"im_{v}"], batch[f"map_{v}"], batch[f"aug_{v}"],
                      plan_views(batch[f"aug_{v}"]))
    device_side = (clock() - t) / n * 1e3
    torch.set_num_threads(threads)
    out = {path: {k: 1e3 * v / n for k, v in acc[path].items()} for path in PATHS}
    for path in PATHS:
        out[path]["total (loader)"] = sum(out[path].values())
    out["device"]["device-side work run on this CPU (not loader)"] = device_side
    return out


def device_half_ips(batch: dict, device, *, size: int, steps: int = 10) -> float:
    """Images/s of :func:`batch_to_device` on ``device`` (flip, jitter, grayscale, blur,
    normalisation of both views) for a device-path batch tiled to ``size`` samples, already
    on the device (the copy is the prefetcher's, overlapped)."""
    from model.prior.device_augment import batch_to_device, copy_to_device, host_plans

    reps = -(-size // len(batch["aug_q"]))
    tiled = {k: v.repeat((reps,) + (1,) * (v.dim() - 1))[:size] for k, v in batch.items()
             if torch.is_tensor(v) and k.startswith(("im_", "map_", "aug_"))}
    on = copy_to_device(host_plans(tiled), device, non_blocking=False)
    cuda = device.type == "cuda"
    # CUDA: wall time; CPU: one thread and process CPU time (robust on a loaded machine)
    sync, clock = (torch.cuda.synchronize, time.perf_counter) if cuda else (
        lambda: None, time.process_time)
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)
    for _ in range(2):
        batch_to_device(on, device, channels_last=cuda)
    sync()
    t = clock()
    for _ in range(steps):
        batch_to_device(on, device, channels_last=cuda)
    sync()
    torch.set_num_threads(threads)
    return steps * size / (clock() - t)


def loader_only(args, device, dinfo):
    rows = {path: [] for path in PATHS}
    cpu_rows = {path: [] for path in PATHS}
    first = {}
    for _ in range(args.rounds):  # alternate, so drifting load hits both paths alike
        for path in PATHS:
            ips, per_cpu, first[path] = loader_ips(args, device, dinfo, path)
            rows[path].append(ips)
            cpu_rows[path].append(per_cpu)
            print(f"loader --augment-on {path}: {ips:.1f} images/s ({args.workers} workers), "
                  f"{per_cpu:.1f} images per worker CPU-second", flush=True)
    parts = time_parts(args, dinfo, device, args.parts_images)
    half_size = args.ship_batch if device.type == "cuda" else args.batch
    half = device_half_ips(first["device"], device, size=half_size)
    print(f"device half on {device}: {half:.0f} images/s (batch {half_size})", flush=True)
    best = {path: max(v) for path, v in rows.items()}
    per_core = {path: max(cpu_rows[path]) for path in PATHS}
    ship = {path: batch_bytes(first[path], per=args.batch, to=args.ship_batch) for path in PATHS}
    res = {"args": {k: str(v) for k, v in vars(args).items()}, "ips": rows, "best_ips": best,
           "per_cpu_second": cpu_rows, "per_core_ips": per_core,
           "speedup": per_core["device"] / per_core["cpu"],
           "speedup_wall": best["device"] / best["cpu"],
           "ms_per_image": parts, "bytes_per_batch": ship,
           "device_half": {"device": str(device), "batch": half_size, "ips": half},
           "cores_for": {str(r): {p: r / per_core[p] for p in PATHS} for r in (2000, 3500)}}
    lines = [f"Crop {args.crop}, batch {args.batch}, {args.workers} "
             f"worker(s), best of {args.rounds} alternating rounds of {args.loader_batches} "
             f"batches.", "",
             markdown_table(["--augment-on", "loader images/s (wall)",
                             "images per worker CPU-second (per core)",
                             "cores for 2,000 / 3,500 images/s", f"MB per batch of {args.ship_batch}"],
                            [[path, f"{best[path]:.1f}", f"{per_core[path]:.1f}",
                              f"{2000 / per_core[path]:.0f} / {3500 / per_core[path]:.0f}",
                              f"{ship[path] / 1e6:.1f}"] for path in PATHS]),
             "", f"Speed-up per core (device / cpu): **{res['speedup']:.2f}x** (wall: "
             f"{res['speedup_wall']:.2f}x).", "",
             f"Device half (flip, jitter, grayscale, blur, normalise; both views) on {device}: "
             f"{half:.0f} images/s at batch {half_size}"
             + ("." if device.type == "cuda" else " per CPU-second of one thread."), "",
             f"CPU ms per image (two views), one thread, {args.parts_images} images:", "",
             markdown_table(["path", "part", "ms"],
                            [[path, part, f"{ms:.2f}"] for path in PATHS
                             for part, ms in parts[path].items()], align="llr")]
    print(f"{machine()}, {device}")
    print("\n".join(lines))
    write_result(args.out, res, key=f"loader only, {args.dataset}, {args.patches}, crop {args.crop}, {device}",
                 table="\n".join(lines))


if __name__ == "__main__":
    main()
