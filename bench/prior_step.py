"""Prior pretraining throughput: the training step (global-only vs global + local) and the
DataLoader (JPEG + patch map + two augmentations) on this machine.

For each backbone, in one process and on the same pre-loaded batches:

* ``step``: images/s of :func:`model.prior.trainer.train_step` with ``loss="global"`` and
  ``loss="both"`` (``warmup`` untimed steps, then ``steps`` timed ones); the ratio
  ``both / global`` of the step times is the cost of the local term (target <= 1.25);
* ``loader``: images/s of the DataLoader alone (``--workers`` workers, persistent);
* ``pipeline``: loader + step together (``loss="both"``), with the fraction of the time
  spent waiting for data.

Writes ``<out>.md`` (table) and ``<out>.json``. Example::

    python bench/prior_step.py --root /tmp/camvid/folder --store .../slic-train-*.zarr \
        --backbones efficientnet_lite0,resnet18 --crop 160 --batch 32 --workers 2
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.prior.trainer import (  # noqa: E402
    PriorConfig,
    build_data,
    build_model,
    build_optimizer,
    finalize_config,
    train_step,
)
from model.utils import DistInfo, pick_device  # noqa: E402


def config(args, backbone: str, loss: str, workers: int) -> PriorConfig:
    return finalize_config(PriorConfig(
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
    ap.add_argument("--out", default="bench/results/prior_step")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    dinfo = DistInfo()
    n = args.warmup + args.steps

    # the loader alone
    cfg = config(args, args.backbones.split(",")[0], "both", args.workers)
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
        cfg = config(args, backbone, "both", args.workers)
        torch.manual_seed(0)
        model = build_model(cfg, weights="none").to(device).train()
        opt, sched = build_optimizer(model, cfg, steps_per_epoch=100)
        _, sampler, loader = build_data(cfg, dinfo, device=device)
        sampler.set_epoch(1)
        it = iter(loader)
        wait = total = 0.0
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

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}"
    lines = [f"Machine: {machine}; crop {args.crop}, batch {args.batch}, queues {args.queue}, "
             f"{args.steps} timed steps after {args.warmup} warm-up; loader {args.workers} workers.",
             "", "| backbone | global-only img/s | global+local img/s | local cost (time ratio) "
             "| loader img/s | loader+step img/s | data-wait |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['global_ips']:.1f} | {r['both_ips']:.1f} | "
                     f"{r['local_cost']:.2f} | {r['loader_ips']:.1f} | {r['pipeline_ips']:.1f} | "
                     f"{100 * r['data_wait']:.0f}% |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine": machine,
                                                    "args": vars(args)}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
