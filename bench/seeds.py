"""Training noise: QGNet vs the ``--no-prior-map`` baseline over N training seeds, one fold.

Few-shot papers report one training run scored on 1,000 episodes. The episode noise of
that number is what ``qgnet-eval compare`` bounds (paired bootstrap over episodes); the
training noise (another seed: other initialisation of the trainable layers, other
episode order, other augmentations) is usually larger and is what this script measures.

For every training seed s, with the project's own commands (subprocesses, one torch
thread each, QGNet and the baseline side by side as in ``make demo``):

1. ``qgnet-train fss --seed s`` for QGNet (``--prior P``) and for the baseline;
2. both checkpoints scored on the same fixed test episodes
   (:func:`model.fss.compare.compare_checkpoints`): per-seed mIoU, FB-IoU and the paired
   difference QGNet - baseline with its episode-bootstrap 95 % interval.

Then over seeds: the mean paired difference, its sample std, and a Student-t 95 %
interval of the mean (n - 1 degrees of freedom). ``--out`` merges the record (one per
dataset and fold) into the results file.

    python -m bench.seeds --dataset demo --seeds 1,2,3 --out bench/results/seeds.json

For ``--dataset demo`` the data, superpixels, masks, episodes and the demo prior are made
first with ``make demo``'s commands (each resumes or is skipped when done); for other
datasets the mask stores and episode files must exist and ``--prior`` names Fp.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, add_out_argument, machine, write_result

PROGS = {"qgnet-prep": "cli.prep", "qgnet-train": "cli.train", "qgnet-eval": "cli.evaluate"}

# Student-t 0.975 quantiles, 1..10 degrees of freedom (scipy is not a dependency)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}


def _cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", PROGS[argv[0]], *argv[1:]]


def run(argv: list[str]) -> None:
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(_cmd(argv), check=True, cwd=ROOT)


def run_parallel(jobs: dict[str, tuple[list[str], Path]]) -> None:
    procs = {}
    for name, (argv, logfile) in jobs.items():
        print(f"$ {' '.join(argv)} > {logfile} 2>&1 &", flush=True)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with logfile.open("w") as out:
            procs[name] = (subprocess.Popen(_cmd(argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT),
                           logfile)
    for name, (p, logfile) in procs.items():
        if p.wait() != 0:
            tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"{name} failed (exit {p.returncode}); last lines of {logfile}:\n{tail}")


def prepare_demo(cache: str, runs: Path, fold: int, episodes: int, prior_steps: int) -> Path:
    """``make demo``'s offline steps and prior; returns the prior export."""
    c = ["--cache-dir", cache]
    run(["qgnet-prep", "demo", *c])
    run(["qgnet-prep", "superpixels", "--dataset", "demo", "--method", "slic", "--split", "train", *c])
    for split in ("train", "val"):
        run(["qgnet-prep", "masks", "--dataset", "demo", "--split", split, *c])
    run(["qgnet-prep", "episodes", "--dataset", "demo", "--fold", str(fold), "--shot", "1",
         "--episodes", str(episodes), *c])
    prior = runs / "prior" / "prior_extractor.pt"
    if not prior.exists():
        run(["qgnet-train", "prior", "--dataset", "demo", "--patches", "slic",
             "--backbone", "efficientnet_lite0", "--init", "imagenet", "--crop", "128",
             "--min-patch-pixels", "96", "--batch-size", "16", "--queue-size", "128",
             "--local-queue-size", "1024", "--momentum", "0.99", "--epochs", "20",
             "--max-steps", str(prior_steps), "--workers", "1", "--ckpt-every", "50",
             "--log-every", "10", "--out", str(runs / "prior"), *c])
    return prior


def train_seed(seed: int, *, args, prior: str, runs: Path, start: bool = True):
    """Train both models with ``seed`` side by side (skipped when best.pt exists); with
    ``start=False`` return the checkpoints and the jobs without running them."""
    models = {"baseline": ["--no-prior-map"], "qgnet": ["--prior", prior]}
    ckpts, jobs = {}, {}
    for name, flags in models.items():
        run_dir = runs / f"seed{seed}" / f"fss-{name}"
        ckpts[name] = run_dir / "best.pt"
        if ckpts[name].exists():
            print(f"# seed {seed} {name}: {ckpts[name]} exists, skipped", flush=True)
            continue
        jobs[name] = (["qgnet-train", "fss", "--dataset", args.dataset, "--fold", str(args.fold),
                       "--shot", "1", "--backbone", args.backbone, "--weights", args.weights, *flags,
                       "--max-steps", str(args.steps), "--val-episodes", "0", "--workers", "1",
                       "--threads", "1", "--log-every", "50", "--no-progress", "--seed", str(seed),
                       *(["--crop", str(args.crop)] if args.crop else []),
                       "--out", str(run_dir), "--cache-dir", args.cache_dir],
                      runs / "logs" / f"train-seed{seed}-{name}.txt")
    if not start:
        return ckpts, jobs
    if jobs:
        run_parallel(jobs)
    return ckpts


def t_interval(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    n = a.size
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    half = T975.get(n - 1, 1.96) * std / np.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": int(n), "ci95": [mean - half, mean + half],
            "min": float(a.min()), "max": float(a.max()), "values": [float(x) for x in a]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--seeds", default="1,2,3", help="Training seeds, comma list.")
    ap.add_argument("--steps", type=int, default=250, help="Few-shot steps per model (demo's).")
    ap.add_argument("--episodes", type=int, default=400, help="Test episodes (demo's).")
    ap.add_argument("--crop", type=int, default=0, help="Training crop (default: the dataset's, "
                                                       "161 for demo).")
    ap.add_argument("--episode-seed", type=int, default=321, help="Seed of the test episode file.")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--prior", help="Fp for QGNet (default for demo: the demo's prior, trained here).")
    ap.add_argument("--prior-steps", type=int, default=60)
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--runs", default="runs/seeds", type=Path)
    ap.add_argument("--stage", choices=["all", "train", "eval"], default="all",
                    help="eval: score the trained seeds (each seed's compare.json is kept) and "
                         "report over the seeds scored so far.")
    ap.add_argument("--all-at-once", action="store_true",
                    help="Train every seed's two models at the same time (2 x seeds processes) "
                         "instead of one seed after the other.")
    add_out_argument(ap, "seeds")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = args.runs if args.runs.is_absolute() else ROOT / args.runs
    t0 = time.perf_counter()
    prior = args.prior
    if args.dataset == "demo" and not prior:
        prior = str(prepare_demo(args.cache_dir, runs, args.fold, args.episodes, args.prior_steps))
    if not prior:
        raise SystemExit("--prior is needed for datasets other than demo")
    ckpts = {}
    t_train = time.perf_counter()
    if args.all_at_once and args.stage != "eval":
        jobs = {}
        for s in seeds:
            ckpts[s], js = train_seed(s, args=args, prior=prior, runs=runs, start=False)
            jobs.update({f"seed{s}-{k}": v for k, v in js.items()})
        if jobs:
            run_parallel(jobs)
    for s in seeds:
        if args.stage == "eval":
            ckpts[s], _ = train_seed(s, args=args, prior=prior, runs=runs, start=False)
            continue
        ckpts[s] = train_seed(s, args=args, prior=prior, runs=runs)
        print(f"seed {s} trained ({time.perf_counter() - t_train:.0f} s so far)", flush=True)
    t_train = time.perf_counter() - t_train
    if args.stage == "train":
        return

    import torch

    torch.set_num_threads(1)
    from model.fss.compare import compare_checkpoints

    per_seed = []
    for s in seeds:
        if not all(c.exists() for c in ckpts[s].values()):
            print(f"seed {s}: not trained yet, left out", flush=True)
            continue
        done = runs / f"seed{s}" / "compare.json"
        if done.exists():
            r = json.loads(done.read_text())
        else:
            t_eval = time.perf_counter()
            r = compare_checkpoints(ckpts[s]["baseline"], ckpts[s]["qgnet"], seeds=[args.episode_seed],
                                    n_episodes=args.episodes, resamples=args.resamples,
                                    cache_dir=args.cache_dir, workers=1, progress=False)
            r["eval_seconds"] = round(time.perf_counter() - t_eval, 1)
            done.write_text(json.dumps(r) + "\n")
        row = {"seed": s, "baseline_miou": r["a"]["miou"]["mean"], "qgnet_miou": r["b"]["miou"]["mean"],
               "baseline_fb_iou": r["a"]["fb_iou"]["mean"], "qgnet_fb_iou": r["b"]["fb_iou"]["mean"],
               "diff_miou": r["diff"]["miou"]["estimate"], "diff_miou_ci95": r["diff"]["miou"]["ci95"],
               "diff_fb_iou": r["diff"]["fb_iou"]["estimate"],
               "diff_fb_iou_ci95": r["diff"]["fb_iou"]["ci95"], "episodes": r["episodes"]}
        per_seed.append(row)
        print(f"seed {s}: baseline {row['baseline_miou'] * 100:.2f}  QGNet {row['qgnet_miou'] * 100:.2f}"
              f"  diff {row['diff_miou'] * 100:+.2f} [{row['diff_miou_ci95'][0] * 100:+.2f}, "
              f"{row['diff_miou_ci95'][1] * 100:+.2f}]", flush=True)
    if not per_seed:
        raise SystemExit("no seed is trained yet; run with --stage train first")
    seeds = [r["seed"] for r in per_seed]
    summary = {k: t_interval([r[k] for r in per_seed])
               for k in ("baseline_miou", "qgnet_miou", "diff_miou", "diff_fb_iou")}
    result = {"dataset": args.dataset, "fold": args.fold, "seeds": seeds, "steps": args.steps,
              "crop": args.crop or "default",
              "episodes": args.episodes, "episode_seed": args.episode_seed, "prior": prior,
              "backbone": args.backbone, "per_seed": per_seed, "summary": summary,
              "train_seconds": round(t_train, 1), "total_seconds": round(time.perf_counter() - t0, 1),
              "machine": machine()}
    print(format_markdown(result))
    write_result(args.out, result, key=f"{args.dataset} fold {args.fold}",
                 table=format_markdown(result))


def format_markdown(r: dict) -> str:
    pct = lambda x: f"{x * 100:.2f}"  # noqa: E731
    lines = [f"{r['dataset']} fold {r['fold']}, 1-shot, {r['backbone']}, crop {r.get('crop')}, "
             f"{r['steps']} steps, "
             f"{r['episodes']} test episodes (seed {r['episode_seed']}), training seeds {r['seeds']}", "",
             "| training seed | baseline mIoU | QGNet mIoU | QGNet - baseline (episode-bootstrap 95 % CI) |",
             "|---:|---:|---:|---|"]
    for p in r["per_seed"]:
        lo, hi = p["diff_miou_ci95"]
        lines.append(f"| {p['seed']} | {pct(p['baseline_miou'])} | {pct(p['qgnet_miou'])} | "
                     f"{p['diff_miou'] * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}] |")
    s = r["summary"]
    d = s["diff_miou"]
    lines += ["", f"Over {d['n']} training seeds: baseline {pct(s['baseline_miou']['mean'])} ± "
                  f"{pct(s['baseline_miou']['std'])}, QGNet {pct(s['qgnet_miou']['mean'])} ± "
                  f"{pct(s['qgnet_miou']['std'])} mIoU (mean ± sample std); paired difference "
                  f"{d['mean'] * 100:+.2f} ± {d['std'] * 100:.2f} (range {d['min'] * 100:+.2f} .. "
                  f"{d['max'] * 100:+.2f}), Student-t 95 % interval of the mean "
                  f"[{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}].",
              (f"Training {r['train_seconds'] / 60:.1f} min, total {r['total_seconds'] / 60:.1f} min"
               if r["train_seconds"] > 1 else "Scores read from each seed's compare.json")
              + f" on {r['machine']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
