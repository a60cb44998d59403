"""Patch regime of the prior's superpixels, measured where the local loss sees it.

The paper (Figure 4, section 5.4) says SLIC patches are *larger* than Felzenszwalb's in
its setting, and Table 5 compares those two regimes. What the local InfoNCE sees is not the
whole-image superpixel map but the patches :func:`model.prior.patches.sample_patch_ids`
picks from two MoCo-v2 views: ids visible with at least ``min_patch_pixels`` in *both*
views (512 at crop 224, half a stride-32 feature cell), up to 16 per image. For every image
this script draws ``--views`` view pairs with the trainer's own ``PairedAugment`` (crop and
flip; the photometric part does not move a map) and runs the trainer's own sampler on them
(with as many slots as there are ids, so the first 16 of its random order are exactly what
the pooled mode takes, and the first one what the crop mode takes). Four figures per method:

- ``median``: median area (pixels of the S x S view) of the sampled patches, both views;
- ``pixel-weighted``: the area of the sampled patch a random sampled pixel lies in (FH has
  a heavy tail of huge segments: sky, road);
- ``slots``: mean number of the 16 slots filled per view pair;
- ``usable``: mean number of ids visible in both views (what the slots are drawn from).

It also prints the whole-image figures of the earlier table (median / pixel-weighted area
when the whole image is resized to S x S, superpixels per image). Areas are pixels at S.

    python -m bench.patch_area --images 40 --views 8

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

# (method, parameters): the defaults of pipeline.superpixels.DEFAULTS are marked in the
# output; the other rows are the neighbourhood the defaults were chosen from.
GRID = [("slic", {"n_segments": 100}), ("slic", {"n_segments": 50}),
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

    ds = open_dataset("demo", None, cache_dir=cache_dir)  # generated on first use
    ids = ds.ids("train")
    step = max(len(ids) // n, 1)
    return [ds.load_image(i) for i in ids[::step][:n]]


def whole_image_stats(labels_list, crop: int) -> dict:
    """Median patch area (pooled, and pixel-weighted) at crop x crop; patches per image."""
    areas, weights, counts = [], [], []
    for lab in labels_list:
        a = np.bincount(lab.ravel())[1:]  # label 0 = none
        a = a[a > 0]
        areas.append(a / lab.size * crop * crop)
        weights.append(a / lab.size)  # share of the image's pixels in that patch
        counts.append(a.size)
    areas, weights = np.concatenate(areas), np.concatenate(weights)
    return {"median_area": float(np.median(areas)),
            "pixel_weighted_area": weighted_median(areas, weights),
            "segments_per_image": float(np.median(counts))}


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half of the total weight lies (lower weighted median)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def loss_patch_stats(images, labels_list, *, crop: int, views: int, slots: int,
                     min_pixels: int, seed: int = 0) -> dict:
    """The four figures of the patches the local loss uses (module docstring)."""
    import torch

    from model.prior.augment import PairedAugment
    from model.prior.patches import sample_patch_ids

    aug = PairedAugment(size=crop, scale=(0.2, 1.0), photometric=False)
    g = torch.Generator().manual_seed(seed)
    areas, usable, filled = [], [], []
    for image, lab in zip(images, labels_list, strict=True):
        lab = lab.astype(np.int64)
        pairs = [(aug(image, lab, generator=g)[1], aug(image, lab, generator=g)[1])
                 for _ in range(views)]
        map_q = torch.stack([p[0] for p in pairs])  # V x S x S
        map_k = torch.stack([p[1] for p in pairs])
        n_ids = int(lab.max())
        ids, valid = sample_patch_ids(map_q, map_k, max(n_ids, slots), min_pixels=min_pixels,
                                      generator=g)  # every eligible id, in random order
        for v in range(views):
            eligible = ids[v][valid[v]]
            usable.append(int(eligible.numel()))
            taken = eligible[:slots]  # the pooled mode's slots (the crop mode takes [:1])
            filled.append(int(taken.numel()))
            for m in (map_q[v], map_k[v]):
                counts = torch.bincount(m.flatten(), minlength=n_ids + 1)
                areas.append(counts[taken].numpy())
    a = np.concatenate(areas).astype(np.float64)
    return {"median": float(np.median(a)) if a.size else float("nan"),
            "pixel_weighted": weighted_median(a, a) if a.size else float("nan"),
            "slots": float(np.mean(filled)), "usable": float(np.mean(usable)),
            "pairs": len(filled)}


def parse_grid(specs: list[str] | None):
    """``slic:n_segments=50`` / ``felzenszwalb:scale=200,min_size=100`` -> GRID rows."""
    if not specs:
        return GRID
    rows = []
    for spec in specs:
        method, _, rest = spec.partition(":")
        params = {k: float(v) if "." in v or k == "scale" else int(v)
                  for k, v in (kv.split("=") for kv in rest.split(",") if kv)}
        rows.append((method, params))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40, help="Images per dataset.")
    ap.add_argument("--views", type=int, default=8, help="View pairs per image.")
    ap.add_argument("--crop", type=int, default=224, help="The prior's crop S.")
    ap.add_argument("--slots", type=int, default=16, help="Patches per image (the pooled mode's).")
    ap.add_argument("--min-patch-pixels", type=int, default=None,
                    help="Visibility threshold per view (default half a stride-32 cell at S: "
                         "512 at 224, PriorMoCo's default).")
    ap.add_argument("--grid", nargs="*", help="Rows instead of the built-in grid, e.g. "
                                              "slic:n_segments=100 felzenszwalb:scale=300,min_size=250")
    ap.add_argument("--datasets", nargs="*", default=["camvid", "demo"])
    ap.add_argument("--backend", default="numba", help="Backend of both methods (numba: "
                    "Achanta et al.'s SLIC, the paper recipe's).")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--out", default="bench/results/patch_area")
    args = ap.parse_args()
    import torch

    from pipeline.superpixels import DEFAULTS, resolve_backend, segment

    torch.set_num_threads(1)
    cells = (-(-args.crop // 32)) ** 2  # stride-32 feature cells of the view, as PriorMoCo
    min_pixels = args.min_patch_pixels or max(1, int(args.crop * args.crop / cells) // 2)
    loaders = {"camvid": lambda: camvid_images(args.images),
               "demo": lambda: demo_images(args.images, args.cache_dir)}
    rows = []
    t_start = time.process_time()
    for name in args.datasets:
        images = loaders[name]()
        if not images:
            print(f"{name}: no images, skipped")
            continue
        for method, params in parse_grid(args.grid):
            backend = resolve_backend(method, args.backend)
            labels = [segment(im, method, backend=backend, **params) for im in images]
            full = {**DEFAULTS[method], **params}
            row = {"dataset": name, "hw": list(images[0].shape[:2]), "images": len(images),
                   "method": method, "params": params, "backend": backend,
                   "default": full == DEFAULTS[method],
                   **whole_image_stats(labels, args.crop),
                   "loss": loss_patch_stats(images, labels, crop=args.crop, views=args.views,
                                            slots=args.slots, min_pixels=min_pixels)}
            rows.append(row)
            lo = row["loss"]
            print(f"{name:7s} {method:12s} {json.dumps(params):38s} loss: median {lo['median']:6.0f} "
                  f"pw {lo['pixel_weighted']:6.0f} slots {lo['slots']:5.1f} usable {lo['usable']:5.1f}"
                  f" | whole image: median {row['median_area']:5.0f} pw "
                  f"{row['pixel_weighted_area']:6.0f} n {row['segments_per_image']:4.0f}", flush=True)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"crop": args.crop, "views": args.views, "slots": args.slots,
            "min_patch_pixels": min_pixels, "cpu_seconds": round(time.process_time() - t_start, 1),
            "machine": f"{platform.node()} {os.cpu_count()} CPUs", "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [f"Patches the local loss uses at crop {args.crop}: ids visible with >= {min_pixels} px "
             f"in both of two MoCo-v2 views, up to {args.slots} per image ({args.views} view pairs "
             f"per image; areas in px of the {args.crop} x {args.crop} view, both views). Whole "
             f"image: the map resized to the crop, all superpixels. **Bold**: the defaults.", "",
             "| data | method | parameters | loss: median (px) | loss: pixel-weighted (px) | "
             f"slots filled (of {args.slots}) | usable / pair | whole image: median | "
             "whole image: pixel-weighted | superpixels / image |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = ", ".join(f"{k} {v:g}" for k, v in r["params"].items())
        if r["default"]:
            p = f"**{p}**"
        lo = r["loss"]
        lines.append(f"| {r['dataset']} ({r['hw'][1]}x{r['hw'][0]}) | {r['method']} | {p} | "
                     f"{lo['median']:.0f} | {lo['pixel_weighted']:.0f} | {lo['slots']:.1f} | "
                     f"{lo['usable']:.1f} | {r['median_area']:.0f} | {r['pixel_weighted_area']:.0f} | "
                     f"{r['segments_per_image']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
