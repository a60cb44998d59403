"""``make demo``: the whole pipeline end to end on the built-in demo dataset.

demo dataset -> SLIC superpixels -> masks -> episodes -> prior pretraining (global + local
InfoNCE) -> few-shot training on one fold, QGNet and the ``--no-prior-map`` baseline ->
evaluation on fixed episodes -> Figure-5 style panels, then both mIoUs side by side and
QGNet - baseline with its paired bootstrap 95 % CI over the episodes (model.fss.compare).

Every step is the real command a user would type, printed before it runs. Steps whose
output already exists are skipped (stores resume; finished runs are kept), so a second
``make demo`` is quick; a training interrupted half-way (Ctrl-C, a killed terminal) is
continued with ``--resume`` from its last checkpoint; ``--fresh`` deletes the demo's runs
and cache and starts over. The commands run as children that die with the demo (Linux:
``PR_SET_PDEATHSIG``; elsewhere they are terminated when the demo exits): killing the demo
never leaves a training running.
Sized for a 2-core CPU (under 15 minutes: QGNet and the baseline train side by side, one
process per core); on a GPU it just runs faster.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

PROGS = {"qgnet-prep": "cli.prep", "qgnet-train": "cli.train", "qgnet-eval": "cli.evaluate",
         "qgnet-export": "cli.export", "qgnet-predict": "cli.predict"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int):
    """``preexec_fn`` of every child: the kernel sends it SIGTERM when the demo dies, however
    the demo dies (Ctrl-C, ``kill``, ``kill -9``); no-op where prctl does not exist."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the demo died before prctl took effect
            os._exit(1)

    return preexec


def _spawn(argv: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", PROGS[argv[0]], *argv[1:]]
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent(os.getpid()), **kw)


def _stop(procs) -> None:
    """Terminate children still running (the demo is leaving early), then reap them."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run(argv: list[str], *, log: list[tuple[str, float]]) -> None:
    shown = " ".join(shlex.quote(a) for a in argv)
    click.secho(f"\n$ {shown}", fg="cyan", bold=True)
    t0 = time.perf_counter()
    proc = _spawn(argv)
    try:
        rc = proc.wait()
    finally:
        _stop([proc])
    dt = time.perf_counter() - t0
    log.append((shown, dt))
    if rc != 0:
        raise click.ClickException(f"step failed (exit {rc}): {shown}")
    click.secho(f"  ({dt:.0f} s)", fg="green")


def _last_step(run: Path) -> int:
    """Newest training step logged in ``run``/metrics.jsonl (0 before the first)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue
    return 0


def _run_parallel(jobs: dict[str, tuple[list[str], Path]], *, log: list[tuple[str, float]],
                  runs: dict[str, Path] | None = None, total: int = 0) -> None:
    """Run several commands at once (one per core), each writing to its own log file; a
    status line every 30 s (training steps read from the runs' metrics.jsonl)."""
    t0 = time.perf_counter()
    procs = {}
    try:
        for name, (argv, logfile) in jobs.items():
            shown = " ".join(shlex.quote(a) for a in argv)
            click.secho(f"\n$ {shown} > {logfile} 2>&1 &", fg="cyan", bold=True)
            logfile.parent.mkdir(parents=True, exist_ok=True)
            with logfile.open("a") as out:  # the child keeps its own copy of the descriptor
                procs[name] = (_spawn(argv, stdout=out, stderr=subprocess.STDOUT), shown, logfile)
        while running := [p for p, _, _ in procs.values() if p.poll() is None]:
            try:
                running[0].wait(timeout=30)  # still running: no busy loop once one ends
            except subprocess.TimeoutExpired:
                pass
            if runs and any(p.poll() is None for p, _, _ in procs.values()):
                state = ", ".join(f"{n} step {_last_step(r)}/{total}" for n, r in runs.items())
                click.echo(f"  [{time.perf_counter() - t0:4.0f} s] {state}")
    finally:  # Ctrl-C or an error here: no training keeps running without the demo
        _stop([p for p, _, _ in procs.values()])
    dt = time.perf_counter() - t0
    for p, shown, logfile in procs.values():
        log.append((f"{shown}  (in parallel)", dt))
        if p.returncode != 0:
            tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-25:])
            raise click.ClickException(f"step failed (exit {p.returncode}): {shown}\n"
                                       f"last lines of {logfile}:\n{tail}")
        click.echo("  " + (logfile.read_text(errors="replace").strip().splitlines() or [""])[-1])
    click.secho(f"  ({dt:.0f} s for {len(procs)} commands side by side)", fg="green")


def _predict_inputs(data: Path, fold: int, *, n_queries: int = 4, min_pixels: int = 2048
                    ) -> tuple[Path, Path, int, list[Path]]:
    """A support (image, mask, class) and query images for the demo's ``qgnet-predict`` step:
    the first test class of ``fold``, the first val image holding it with >= ``min_pixels``
    pixels as the support, the next val images holding it as queries."""
    import numpy as np
    from PIL import Image

    cls = int((data / "folds.txt").read_text().splitlines()[fold].split()[0])
    names = (data / "val.txt").read_text().split()
    hits = [n for n in names
            if (np.asarray(Image.open(data / "masks" / f"{n}.png")) == cls).sum() >= min_pixels]
    if len(hits) < 2:
        raise click.ClickException(f"the demo's val split has no two images of class {cls}")
    support = hits[0]
    return (data / "images" / f"{support}.png", data / "masks" / f"{support}.png", cls,
            [data / "images" / f"{n}.png" for n in hits[1:1 + n_queries]])
def _resume_flags(what: str, path: Path | None) -> list[str]:
    """``--resume PATH`` when an interrupted run left a checkpoint at ``path``, else []."""
    if path is None:
        return []
    click.secho(f"\n# {what}: continuing the interrupted run from {path}", fg="yellow")
    return ["--resume", str(path)]


def _skip(what: str, path: Path, log) -> None:
    click.secho(f"\n# {what}: {path} exists, skipped (make demo FRESH=1 starts over)", fg="yellow")
    log.append((f"# skipped: {what}", 0.0))


@click.command()
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(path_type=Path))
@click.option("--runs", "runs_dir", default="runs/demo", show_default=True,
              type=click.Path(path_type=Path), help="Where the demo's runs go.")
@click.option("--fold", type=click.IntRange(0, 3), default=0, show_default=True)
@click.option("--prior-steps", type=click.IntRange(min=1), default=60, show_default=True,
              help="Prior pretraining steps.")
@click.option("--fss-steps", type=click.IntRange(min=1), default=250, show_default=True,
              help="Few-shot training steps per model.")
@click.option("--fss-ckpt-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Few-shot checkpoint (last.pt) every N steps: where an interrupted demo resumes.")
@click.option("--episodes", type=click.IntRange(min=1), default=400, show_default=True,
              help="Test episodes.")
@click.option("--parallel/--serial", default=True, show_default=True,
              help="Train (and evaluate) QGNet and the baseline side by side, one process per "
                   "core, or one after the other.")
@click.option("--fresh", is_flag=True, help="Delete the demo's cache and runs first.")
def main(cache_dir: Path, runs_dir: Path, fold: int, prior_steps: int, fss_steps: int,
         fss_ckpt_every: int, episodes: int, parallel: bool, fresh: bool) -> None:
    """Run the demo pipeline end to end and print QGNet vs the baseline."""
    t_start = time.perf_counter()
    log: list[tuple[str, float]] = []
    cache = ["--cache-dir", str(cache_dir)]
    if fresh or os.environ.get("FRESH") == "1":
        for p in (cache_dir / "demo", runs_dir):
            if p.exists():
                click.echo(f"removing {p}")
                shutil.rmtree(p)
    # One torch thread per process: measured here, two threads on two busy cores ran the
    # prior step 5x slower (oversubscription with the DataLoader workers). On a GPU the
    # threads hardly matter. Override with QGNET_DEMO_THREADS.
    threads = os.environ.get("QGNET_DEMO_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", threads)

    # 1-4: offline stages (each resumes or returns at once when complete)
    _run(["qgnet-prep", "demo", *cache], log=log)
    _run(["qgnet-prep", "superpixels", "--dataset", "demo", "--method", "slic", "--split", "train",
          *cache], log=log)
    for split in ("train", "val"):
        _run(["qgnet-prep", "masks", "--dataset", "demo", "--split", split, *cache], log=log)
    ep_file = cache_dir / "demo" / "episodes" / f"test-fold{fold}-shot1-pfenet-seed321.npz"
    if ep_file.exists():
        _skip("episodes", ep_file, log)
    else:
        _run(["qgnet-prep", "episodes", "--dataset", "demo", "--fold", str(fold), "--shot", "1",
              "--episodes", str(episodes), *cache], log=log)

    # 5: prior extractor pretraining (global + superpixel-local InfoNCE)
    prior_dir = runs_dir / "prior"
    prior = prior_dir / "prior_extractor.pt"
    if prior.exists():
        _skip("prior pretraining", prior, log)
    else:
        half_done = any((prior_dir / "checkpoints").glob("step-*.pt"))
        _run(["qgnet-train", "prior",
              *_resume_flags("prior pretraining", prior_dir if half_done else None), "--dataset", "demo", "--patches", "slic",
              "--backbone", "efficientnet_lite0", "--init", "imagenet", "--crop", "128",
              "--min-patch-pixels", "96", "--batch-size", "16", "--queue-size", "128",
              "--local-queue-size", "1024", "--momentum", "0.99", "--epochs", "20",
              "--max-steps", str(prior_steps), "--workers", "1", "--ckpt-every", "50",
              "--log-every", "10", "--out", str(prior_dir), *cache], log=log)

    # 6-7: few-shot training + evaluation, QGNet and the PFENet-equivalent baseline. Two
    # single-threaded processes side by side use both cores (one torch process with two
    # threads gained little on this machine); no validation during training: best.pt is
    # the last step, scored once below on the fixed test episodes.
    models = {"qgnet": ["--prior", str(prior)], "baseline": ["--no-prior-map"]}
    train_jobs, eval_jobs = {}, {}
    for name, flags in models.items():
        run = runs_dir / f"fss-{name}"
        ckpt = run / "best.pt"
        if ckpt.exists():
            _skip(f"few-shot training ({name})", ckpt, log)
        else:
            half_done = (run / "last.pt").exists()
            train_jobs[name] = (
                ["qgnet-train", "fss",
                 *_resume_flags(f"few-shot training ({name})", run if half_done else None),
                 "--dataset", "demo", "--fold", str(fold), "--shot", "1",
                 "--backbone", "efficientnet_lite0", "--weights", "imagenet", *flags,
                 "--max-steps", str(fss_steps), "--val-episodes", "0", "--workers", "1",
                 "--threads", threads, "--log-every", "10", "--ckpt-every", str(fss_ckpt_every),
                 "--no-progress", "--out", str(run), *cache],
                runs_dir / "logs" / f"train-{name}.txt")
        eval_jobs[name] = (["qgnet-eval", "fss", "--checkpoint", str(ckpt), "--episodes",
                            str(episodes), "--threads", threads, "--no-progress", *cache],
                           runs_dir / "logs" / f"eval-{name}.txt")
    for jobs, what in ((train_jobs, "train"), (eval_jobs, "eval")):
        if not jobs:
            continue
        if parallel:
            _run_parallel(jobs, log=log, total=fss_steps,
                          runs={n: runs_dir / f"fss-{n}" for n in jobs} if what == "train" else None)
        else:
            for argv, _ in jobs.values():
                _run(argv, log=log)
    results = {}
    for name in models:
        data = json.loads((runs_dir / f"fss-{name}" / "results.json").read_text())
        key = next(k for k in sorted(data) if k.startswith(f"fold{fold}-1shot-pfenet-")
                   and not str(data[k].get("scoring", "")).startswith("hsnet"))
        results[name] = data[key]  # PFENet's canvas: scored "pfenet" and "exact" in one pass
    # is the gap more than episode noise? Both models scored the same episodes; the paired
    # bootstrap (what `qgnet-eval compare` runs) reuses their per-episode counts, no rescoring
    from model.fss.compare import compare_results
    from pipeline.fileio import write_json_atomic

    cmp = compare_results(results["baseline"], results["qgnet"], scoring="pfenet", resamples=2000,
                          seed=0)
    write_json_atomic(runs_dir / "compare.json", cmp)

    # 8: Figure-5 panels
    panels = runs_dir / "panels"
    _run(["qgnet-eval", "show", "--checkpoint", str(runs_dir / "fss-qgnet" / "best.pt"),
          "--episodes", "0,1,2,3", "--out", str(panels), "--threads", threads, *cache], log=log)

    # 9: the trained model on "your own" photos: one-file bundle, then qgnet-predict
    bundle = runs_dir / "model.qgnet"
    _run(["qgnet-export", "--checkpoint", str(runs_dir / "fss-qgnet" / "best.pt"),
          "--out", str(bundle)], log=log)
    s_img, s_mask, s_cls, queries = _predict_inputs(cache_dir / "demo" / "data", fold)
    preds = runs_dir / "predict"
    _run(["qgnet-predict", "--model", str(bundle), "--support", str(s_img), "--support-mask",
          str(s_mask), "--mask-value", str(s_cls), "--overlay", "--threads", threads,
          "--no-progress", "--out", str(preds), *map(str, queries)], log=log)

    # summary
    lines = ["| model | mIoU (%), PFENet scoring | FB-IoU (%), PFENet scoring | mIoU (%), exact "
             "| FB-IoU (%), exact | episodes |", "|---|---|---|---|---|---|"]
    for name, label in (("qgnet", "QGNet (prior region map)"),
                        ("baseline", "baseline (--no-prior-map, PFENet)")):
        r = results[name]
        sc = r["scores"]
        lines.append(f"| {label} | {sc['pfenet']['miou']['mean'] * 100:.2f} "
                     f"| {sc['pfenet']['fb_iou']['mean'] * 100:.2f} "
                     f"| {sc['exact']['miou']['mean'] * 100:.2f} | {sc['exact']['fb_iou']['mean'] * 100:.2f} "
                     f"| {max(r['episodes'])} |")
    lines += ["", "PFENet scoring: PFENet's test.py, the one comparable with the paper's tables; "
                  "exact: the exact inverse of the test resize (ours; docs/fss.md, \"Scorings\")."]
    d = cmp["diff"]["miou"]
    gap = (f"QGNet - baseline (PFENet scoring): {d['estimate'] * 100:+.2f} mIoU, paired bootstrap 95 % CI "
           f"[{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}] over the {cmp['episodes']} "
           f"episodes ({'excludes' if d['ci95'][0] > 0 or d['ci95'][1] < 0 else 'includes'} 0; "
           f"episode noise only, one training seed: see bench/seeds.py for training noise). "
           f"Same table: qgnet-eval compare --checkpoint {runs_dir}/fss-baseline/best.pt "
           f"--checkpoint {runs_dir}/fss-qgnet/best.pt")
    lines += ["", gap]
    total = time.perf_counter() - t_start
    text = "\n".join([f"# qgnet demo: fold {fold}, 1-shot, EfficientNet-Lite0 (ImageNet), CPU",
                      "", *lines, "", "Steps:", "",
                      *[f"- `{c}` ({t:.0f} s)" for c, t in log], "",
                      f"Total {total / 60:.1f} min. Panels: {panels}/. qgnet-predict: {preds}/"])
    (runs_dir / "summary.md").write_text(text + "\n")
    click.echo("\n" + "\n".join(lines))
    click.echo(f"\nwritten {runs_dir / 'summary.md'}; panels in {panels}/; "
               f"qgnet-predict masks and overlays in {preds}/; total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
