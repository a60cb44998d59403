"""Real few-shot result on CamVid: 4 interleaved folds, 1-shot, QGNet vs the ``--no-prior-map``
baseline, EfficientNet-Lite0 (ImageNet, from the wheel), CPU.

What it does, with the project's own commands (each a subprocess, one torch thread each):

1. a folder-layout view of ``../shared/data/camvid`` in ``--work`` (images symlinked, masks
   rewritten: CamVid ids 0..10 -> 1..11, void 11 -> 255; nothing is copied into the repo);
2. ``qgnet-prep masks`` (train, val) and ``qgnet-prep episodes --shot 1`` (folds 0-3,
   interleaved: class c is a test class of fold (c - 1) mod 4);
3. per fold, ``qgnet-train fss`` for QGNet and for the baseline **side by side** (two
   processes on the two cores), then ``qgnet-eval fss`` on the fold's fixed test episodes;
4. a Markdown + JSON table of mIoU / FB-IoU per fold.

    python -m bench.camvid_fss --work /tmp/qgnet-camvid --out bench/results/camvid_fss.json

The prior extractor Fp of QGNet is ``--prior`` (default ``imagenet``: ImageNet Lite0, a
stand-in; pass a ``prior_extractor.pt`` from ``qgnet-train prior``). Skips with a message
when CamVid is absent. One record per ``--novel-pixels`` rule, Fp and folds in the results
file.
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

from bench.common import CAMVID, ROOT, add_out_argument, children_cpu_seconds, write_result

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")


def make_folder(src: Path, dest: Path) -> Path:
    """Folder layout of CamVid train + val (test unused) under ``dest``; idempotent."""
    from PIL import Image

    if (dest / "DONE").is_file():
        return dest
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(exist_ok=True)
    for split in ("train", "val"):
        ids = []
        for img in sorted((src / split / "images").glob("*.jpg")):
            link = dest / "images" / img.name
            if not link.exists():
                os.symlink(img.resolve(), link)
            mask = np.asarray(Image.open(src / split / "masks" / f"{img.stem}.png"))
            mask = np.where(mask >= 11, 255, mask.astype(np.int64) + 1).astype(np.uint8)
            Image.fromarray(mask).save(dest / "masks" / f"{img.stem}.png")
            ids.append(img.stem)
        (dest / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (dest / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (dest / "DONE").write_text("ok\n")
    return dest


def sh(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(args), f"> {log}", flush=True)
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)


def wait_all(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    for p, log in procs:
        if p.wait() != 0:
            raise SystemExit(f"failed (exit {p.returncode}); see {log}:\n{log.read_text()[-2000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qgnet-camvid"))
    add_out_argument(ap, "camvid_fss")
    ap.add_argument("--folds", default="0,1,2,3")
    ap.add_argument("--prior", default="imagenet", help="QGNet's Fp: imagenet or a prior_extractor.pt")
    ap.add_argument("--crop", type=int, default=97)
    ap.add_argument("--scale-min", type=float, default=0.18)
    ap.add_argument("--scale-max", type=float, default=0.22)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--novel-pixels", default="background", choices=["background", "ignore"],
                    help="qgnet-train fss --novel-pixels (background = PFENet)")
    args = ap.parse_args(argv)
    if not CAMVID.is_dir():
        print(f"SKIP: CamVid not found at {CAMVID} (expected ../shared/data/camvid beside the repo)")
        return 0
    t_start, cpu_start = time.time(), children_cpu_seconds()
    py = sys.executable
    root = make_folder(CAMVID, args.work / "folder")
    cache = args.work / "cache"
    common = ["--dataset", "camvid", "--cache-dir", str(cache)]
    for split in ("train", "val"):
        wait_all([(sh([py, "-m", "cli.prep", "masks", *common, "--root", str(root), "--split",
                       split, "--no-progress"], args.work / "logs" / f"masks-{split}.txt"),
                   args.work / "logs" / f"masks-{split}.txt")])
    log = args.work / "logs" / "episodes.txt"
    wait_all([(sh([py, "-m", "cli.prep", "episodes", *common, "--shot", "1"], log), log)])
    t_prep = time.time() - t_start

    models = {"qgnet": ["--prior", args.prior], "baseline": ["--no-prior-map"]}
    runs = "runs" if args.novel_pixels == "background" else f"runs-novel-{args.novel_pixels}"
    rows = []
    for fold in [int(f) for f in args.folds.split(",")]:
        t0 = time.time()
        procs = []
        for tag, extra in models.items():
            out = args.work / runs / f"fold{fold}-{tag}"
            if (out / "best.pt").is_file():  # finished earlier: the script resumes
                print(f"# {out} trained, skipped", flush=True)
                continue
            procs.append((sh([py, "-m", "cli.train", "fss", *common, "--root", str(root),
                              "--fold", str(fold), "--shot", "1", "--backbone",
                              "efficientnet_lite0", "--weights", "imagenet", *extra,
                              "--crop", str(args.crop), "--scale-min", str(args.scale_min),
                              "--scale-max", str(args.scale_max), "--epochs", str(args.epochs),
                              "--batch-size", "4", "--workers", "1", "--threads", "1",
                              "--device", "cpu", "--val-episodes", "0", "--no-progress",
                              "--novel-pixels", args.novel_pixels,
                              "--out", str(out)], out.with_suffix(".train.txt")),
                          out.with_suffix(".train.txt")))
        wait_all(procs)
        t_train = time.time() - t0
        procs = []
        for tag in models:
            out = args.work / runs / f"fold{fold}-{tag}"
            if (out / "results.json").is_file() and (out / "results.json").stat().st_mtime > \
                    (out / "best.pt").stat().st_mtime:
                print(f"# {out} evaluated, skipped", flush=True)
                continue
            procs.append((sh([py, "-m", "cli.evaluate", "fss", "--checkpoint", str(out / "best.pt"),
                              "--cache-dir", str(cache), "--episodes", str(args.episodes),
                              "--threads", "1", "--workers", "1", "--device", "cpu",
                              "--no-progress"], out.with_suffix(".eval.txt")),
                          out.with_suffix(".eval.txt")))
        wait_all(procs)
        for tag in models:
            res = json.loads((args.work / runs / f"fold{fold}-{tag}" / "results.json").read_text())
            (r,) = res.values()
            cfg = json.loads((args.work / runs / f"fold{fold}-{tag}" / "config.json").read_text())
            rows.append({"fold": fold, "model": tag, "miou": round(100 * r["miou"]["mean"], 2),
                         "fb_iou": round(100 * r["fb_iou"]["mean"], 2),
                         "per_class": {v["name"]: round(100 * v["mean"], 2)
                                       for c, v in r["per_class"].items()},
                         "episodes": r["episodes"], "episodes_per_s": round(r["episodes_per_s"], 2),
                         "peak_memory_mb": r["peak_memory_mb"],
                         "train_steps": cfg.get("_run", {}).get("steps"),
                         "train_and_eval_s_both_models": round(time.time() - t0),
                         "train_s_both_models": round(t_train)})
        print(f"fold {fold}: " + ", ".join(f"{r['model']} {r['miou']}" for r in rows[-2:]),
              flush=True)

    by = {(r["fold"], r["model"]): r for r in rows}
    folds = sorted({r["fold"] for r in rows})
    lines = ["| model | " + " | ".join(f"fold {f}" for f in folds) + " | mean mIoU | mean FB-IoU |",
             "|---|" + "---:|" * (len(folds) + 2)]
    for tag in models:
        m = [by[(f, tag)]["miou"] for f in folds]
        fb = [by[(f, tag)]["fb_iou"] for f in folds]
        lines.append(f"| {tag} | " + " | ".join(f"{v:.2f}" for v in m)
                     + f" | {np.mean(m):.2f} | {np.mean(fb):.2f} |")
    lines += ["", "Per class IoU (%):", "", "| fold | class | QGNet | baseline |", "|---|---|---:|---:|"]
    for f in folds:
        for c, v in by[(f, "qgnet")]["per_class"].items():
            lines.append(f"| {f} | {c} | {v:.2f} | {by[(f, 'baseline')]['per_class'][c]:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "prep_s": round(t_prep), "total_s": round(time.time() - t_start),
              "children_cpu_s": round(children_cpu_seconds() - cpu_start)}
    print(f"total {result['total_s'] / 60:.1f} min")
    write_result(args.out, result, table=table,
                 key=f"novel pixels {args.novel_pixels}, Fp {args.prior}, folds {args.folds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
