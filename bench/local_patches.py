"""Cost of the two readings of the local patches: the prior's training step, pooled vs crop.

In one process, on the same pre-loaded batches of the real loader (``qgnet-train prior``'s
own ``build_data``), the step of :func:`model.prior.trainer.train_step` is timed for
``--local-patches pooled`` and ``crop`` (and ``--loss global`` as the floor), alternating
the modes for ``--rounds`` rounds so a loaded machine slows them alike. Reported per mode:
CPU seconds of this process per step (``time.process_time``, robust to other processes on
a shared CPU) and wall images/s (on CUDA: synchronised wall time), the best round of each,
and the ratio to pooled.

    python -m bench.local_patches --dataset demo --cache-dir cache --steps 4 --rounds 3 \
        --out bench/results/local_patches.json
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.common import add_out_argument, markdown_table, write_result
from model.prior.config import PriorConfig, build_model, finalize_config
from model.prior.trainer import build_data, build_optimizer, train_step
from model.utils import DistInfo, pick_device

MODES = {"global only": dict(loss="global"), "pooled": dict(local_patches="pooled"),
         "crop": dict(local_patches="crop")}


def config(args, **kw) -> PriorConfig:
    return finalize_config(PriorConfig(
        dataset=args.dataset, root=args.root, cache_dir=args.cache_dir, patches=args.patches,
        batch_size=args.batch, workers=0, device=args.device, epochs=1, seed=0,
        queue_size=args.queue, local_queue_size=args.queue, out="/tmp/unused",
        **{k: v for k, v in kw.items() if v is not None}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--root", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--patches", default="slic")
    ap.add_argument("--batch", type=int, default=None, help="default: the dataset's")
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    add_out_argument(ap, "local_patches")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    base = config(args)
    _, sampler, loader = build_data(base, DistInfo(), device=device)
    sampler.set_epoch(0)
    n = args.warmup + args.steps
    batches = []
    while len(batches) < n:
        for b in loader:
            batches.append(b)
            if len(batches) == n:
                break
    models = {}
    for name, kw in MODES.items():
        cfg = config(args, **kw)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        opt, sched = build_optimizer(model, cfg, steps_per_epoch=100)
        for b in batches[:args.warmup]:
            train_step(model, b, opt, sched, device=device, amp=cfg.amp)
        models[name] = (model, opt, sched, cfg)
    best = {name: (float("inf"), float("inf")) for name in MODES}
    for _ in range(args.rounds):
        for name, (model, opt, sched, cfg) in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            c0, t0 = time.process_time(), time.perf_counter()
            for b in batches[args.warmup:]:
                train_step(model, b, opt, sched, device=device, amp=cfg.amp)
            if device.type == "cuda":
                torch.cuda.synchronize()
            cpu = (time.process_time() - c0) / args.steps
            wall = (time.perf_counter() - t0) / args.steps
            best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
            print(f"{name:12s} {cpu:7.3f} CPU s/step  {base.batch_size / wall:7.1f} img/s", flush=True)
    rows = [{"mode": name, "cpu_s_per_step": cpu, "wall_images_per_s": base.batch_size / wall,
             "cpu_vs_pooled": cpu / best["pooled"][0], "wall_vs_pooled": wall / best["pooled"][1]}
            for name, (cpu, wall) in best.items()]
    table = markdown_table(
        ["mode", "CPU s / step", "x pooled (CPU)", "img/s (wall)", "x pooled (wall time)"],
        [[r["mode"], f"{r['cpu_s_per_step']:.3f}", f"{r['cpu_vs_pooled']:.2f}",
          f"{r['wall_images_per_s']:.1f}", f"{r['wall_vs_pooled']:.2f}"] for r in rows])
    print(f"{base.dataset}, {base.backbone}, crop {base.crop}, batch {base.batch_size}, "
          f"{args.steps} steps x best of {args.rounds} alternating rounds, {device}.\n")
    print(table)
    config_used = {k: getattr(base, k) for k in (
        "dataset", "backbone", "crop", "batch_size", "patches_per_image", "min_patch_pixels",
        "max_patch_pixels", "patch_fill")}
    write_result(args.out, {"rows": rows, "config": config_used,
                            "args": {k: str(v) for k, v in vars(args).items()}},
                 key=f"{base.dataset}, {device}", table=table)


if __name__ == "__main__":
    main()
