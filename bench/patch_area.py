"""Patch regime of the prior's superpixels: median patch area of SLIC and Felzenszwalb.

The paper (Figure 4, section 5.4) says SLIC patches are *larger* than Felzenszwalb's in
its setting, and Table 5 compares those two regimes. This script measures, for a grid of
parameters of each method, the size of the patches the prior extractor sees:

- ``median area``: median over all superpixels of an image set, in pixels of the prior's
  crop S x S, when the whole image is resized to the crop (the RandomResizedCrop view at
  scale 1; a view of area fraction s shows every patch 1/s times larger);
- ``pixel-weighted median``: the area of the patch that a random pixel falls in (FH makes
  many tiny segments and a few huge ones, so the two medians differ a lot);
- ``patches``: median number of superpixels per image.

    .venv/bin/python bench/patch_area.py --images 40 --crop 224 --out bench/results/patch_area

Data: ``../shared/data/camvid`` (train, 480 x 360 street photos, every k-th image) and the
demo dataset (``qgnet-prep demo`` in ``--cache-dir``; made here if missing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"

GRID = [("slic", {"n_segments": 25}), ("slic", {"n_segments": 50}), ("slic", {"n_segments": 100}),
        ("felzenszwalb", {"scale": 1000.0, "min_size": 1000}),
        ("felzenszwalb", {"scale": 300.0, "min_size": 250}),
        ("felzenszwalb", {"scale": 100.0, "min_size": 50})]


def camvid_images(n: int):
    from PIL import Image

    files = sorted((CAMVID / "train" / "images").glob("*.jpg"))
    if not files:
        return []
    step = max(len(files) // n, 1)
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[::step][:n]]


def demo_images(n: int, cache_dir: str):
    from pipeline.datasets import open_dataset

    try:
        ds = open_dataset("demo", None, cache_dir=cache_dir)
        ids = ds.ids("train")
    except Exception:  # noqa: BLE001 - not made yet: make it with the project's command
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "cli.prep", "demo", "--cache-dir", cache_dir],
                       check=True, cwd=ROOT)
        ds = open_dataset("demo", None, cache_dir=cache_dir)
        ids = ds.ids("train")
    step = max(len(ids) // n, 1)
    return [ds.load_image(i) for i in ids[::step][:n]]


def patch_stats(labels_list, crop: int) -> dict:
    """Median patch area (pooled, and pixel-weighted) at crop x crop; patches per image."""
    areas, weights, counts = [], [], []
    for lab in labels_list:
        a = np.bincount(lab.ravel())[1:]  # label 0 = none
        a = a[a > 0]
        scaled = a / lab.size * crop * crop
        areas.append(scaled)
        weights.append(a / lab.size)  # share of the image's pixels in that patch
        counts.append(a.size)
    areas, weights = np.concatenate(areas), np.concatenate(weights)
    order = np.argsort(areas)
    cum = np.cumsum(weights[order])
    weighted = float(areas[order][np.searchsorted(cum, cum[-1] / 2)])
    return {"median_area": float(np.median(areas)), "pixel_weighted_median_area": weighted,
            "median_patches": float(np.median(counts)), "n_patches": int(areas.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40, help="Images per dataset.")
    ap.add_argument("--crop", type=int, default=224, help="The prior's crop S.")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--out", default="bench/results/patch_area")
    args = ap.parse_args()
    from pipeline.superpixels import resolve_backend, segment

    sets = {"camvid": camvid_images(args.images), "demo": demo_images(args.images, args.cache_dir)}
    rows = []
    for name, images in sets.items():
        if not images:
            print(f"{name}: no images, skipped")
            continue
        for method, params in GRID:
            backends = ["fast-slic", "numba"] if method == "slic" else ["numba"]
            for backend in backends:
                backend = resolve_backend(method, backend)
                t0 = time.perf_counter()
                labels = [segment(im, method, backend=backend, **params) for im in images]
                dt = (time.perf_counter() - t0) / len(images)
                s = patch_stats(labels, args.crop)
                row = {"dataset": name, "hw": list(images[0].shape[:2]), "images": len(images),
                       "method": method, "params": params, "backend": backend,
                       "seconds_per_image": round(dt, 4), **s}
                rows.append(row)
                print(f"{name:7s} {method:12s} {json.dumps(params):40s} {backend:9s} median "
                      f"{s['median_area']:8.0f} px  pixel-weighted {s['pixel_weighted_median_area']:8.0f} px  "
                      f"{s['median_patches']:5.0f} patches/img", flush=True)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"crop": args.crop, "machine": f"{platform.node()} {os.cpu_count()} CPUs", "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [f"Patch area at the prior's crop {args.crop} x {args.crop} (whole image resized to "
             f"the crop), median over all superpixels; pixel-weighted = area of the patch a "
             f"random pixel lies in.", "",
             "| data | method | parameters | backend | median area (px) | pixel-weighted median (px) "
             "| patches / image |", "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        p = ", ".join(f"{k} {v:g}" for k, v in r["params"].items())
        lines.append(f"| {r['dataset']} ({r['hw'][1]}x{r['hw'][0]}) | {r['method']} | {p} | {r['backend']} | "
                     f"{r['median_area']:.0f} | {r['pixel_weighted_median_area']:.0f} | "
                     f"{r['median_patches']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
