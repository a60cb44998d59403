"""Patch regime of the prior's superpixels, measured where the local loss sees it.

The paper (Figure 4, section 5.4) says SLIC patches are *larger* than Felzenszwalb's in
its setting, and Table 5 compares those two regimes. What the local InfoNCE sees is not the
whole-image superpixel map but the patches :func:`model.prior.patches.sample_patch_ids`
picks from two MoCo-v2 views: ids whose area in *both* views lies in the rule's window, up
to 16 per image, then the slot filling. For every image this script draws ``--views`` view
pairs with the trainer's own ``PairedAugment`` (crop and flip; the photometric part does
not move a map) and runs the trainer's own sampler and filler on them (with as many slots
as there are ids, so the first 16 of its random order are exactly what the pooled mode
takes, and the first one what the crop mode takes). Two rules:

- ``before`` (issues 10-17): at least half a stride-32 cell (512 px at 224), no upper
  bound, empty slots left empty; Felzenszwalb's defaults then were scale 300 / min_size 250;
- ``after`` (issue 18 §4, :mod:`model.prior.patch_rule`): 1/8 cell .. 1/16 of the view
  (128 .. 3,136 px at 224), empty slots filled with copies; Felzenszwalb 100 / 100.

Four figures per method (plus the distinct patches among the filled slots):

- ``median``: median area (pixels of the S x S view) of the patches in the slots, both views;
- ``pixel-weighted``: the area of the slot patch a random slot pixel lies in (FH has a heavy
  tail of huge segments: sky, road);
- ``slots``: mean number of the 16 slots filled per view pair;
- ``usable``: mean number of ids in the window in both views (what the slots are drawn from).

It also prints the whole-image figures of the earlier table (median / pixel-weighted area
when the whole image is resized to S x S, superpixels per image). Areas are pixels at S.

    python -m bench.patch_area --images 40 --views 8 --out bench/results/patch_area.json

Data: ``../shared/data/camvid`` (train, 480 x 360 street photos, every k-th image) and the
demo dataset (``qgnet-prep demo`` in ``--cache-dir``; made here if missing).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import CAMVID, add_out_argument, write_result

# rule -> (method, parameters, backend) rows: SLIC-100 with the default backend (auto:
# fast-slic where it builds) and Achanta et al.'s (numba, the paper recipe's), and that
# rule's Felzenszwalb defaults; --grid replaces the rows (exploration).
RULES = ("before", "after")
GRID = {"before": [("slic", {"n_segments": 100}, "auto"), ("slic", {"n_segments": 100}, "numba"),
                   ("felzenszwalb", {"scale": 300.0, "min_size": 250}, "numba")],
        "after": [("slic", {"n_segments": 100}, "auto"), ("slic", {"n_segments": 100}, "numba"),
                  ("felzenszwalb", {"scale": 100.0, "min_size": 100}, "numba")]}


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


def rule_window(rule: str, crop: int) -> tuple[int, int | None, str]:
    """``(min_pixels, max_pixels, fill)`` of a rule at crop S (stride-32 feature grid)."""
    from model.prior.patch_rule import default_window

    side = -(-crop // 32)
    if rule == "before":  # half a cell, no upper bound, empty slots stay empty
        return max(1, int(crop * crop / side ** 2 // 2)), None, "none"
    lo, hi = default_window((crop, crop), (side, side))
    return lo, hi, "repeat"


def loss_patch_stats(images, labels_list, *, crop: int, views: int, slots: int, rule: str,
                     seed: int = 0) -> dict:
    """The four figures of the patches the local loss uses (module docstring)."""
    import torch

    from model.prior.augment import PairedAugment
    from model.prior.patch_rule import fill_slots
    from model.prior.patches import sample_patch_ids

    lo, hi, fill = rule_window(rule, crop)
    aug = PairedAugment(size=crop, scale=(0.2, 1.0), photometric=False)
    g = torch.Generator().manual_seed(seed)
    areas, usable, filled, distinct = [], [], [], []
    for image, lab in zip(images, labels_list, strict=True):
        lab = lab.astype(np.int64)
        pairs = [(aug(image, lab, generator=g)[1], aug(image, lab, generator=g)[1])
                 for _ in range(views)]
        map_q = torch.stack([p[0] for p in pairs])  # V x S x S
        map_k = torch.stack([p[1] for p in pairs])
        n_ids = int(lab.max())
        ids, valid = sample_patch_ids(map_q, map_k, max(n_ids, slots), min_pixels=lo,
                                      max_pixels=hi, generator=g)  # every eligible id, random order
        usable += valid.sum(1).tolist()
        ids, valid = ids[:, :slots], valid[:, :slots]  # the pooled mode's slots
        distinct += valid.sum(1).tolist()
        if fill == "repeat":
            source, valid = fill_slots(valid, generator=g)
            ids = ids.gather(1, source)
        for v in range(views):
            taken = ids[v][valid[v]]
            filled.append(int(taken.numel()))
            for m in (map_q[v], map_k[v]):
                counts = torch.bincount(m.flatten(), minlength=n_ids + 1)
                areas.append(counts[taken].numpy())
    a = np.concatenate(areas).astype(np.float64)
    return {"median": float(np.median(a)) if a.size else float("nan"),
            "pixel_weighted": weighted_median(a, a) if a.size else float("nan"),
            "slots": float(np.mean(filled)), "distinct": float(np.mean(distinct)),
            "usable": float(np.mean(usable)), "pairs": len(filled),
            "min_pixels": lo, "max_pixels": hi, "fill": fill}


def parse_grid(specs: list[str]):
    """``slic:n_segments=50`` / ``felzenszwalb:scale=200,min_size=100[@numba]`` -> rows."""
    rows = []
    for spec in specs:
        spec, _, backend = spec.partition("@")
        method, _, rest = spec.partition(":")
        params = {k: float(v) if "." in v or k == "scale" else int(v)
                  for k, v in (kv.split("=") for kv in rest.split(",") if kv)}
        rows.append((method, params, backend or "numba"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40, help="Images per dataset.")
    ap.add_argument("--views", type=int, default=8, help="View pairs per image.")
    ap.add_argument("--crop", type=int, default=224, help="The prior's crop S.")
    ap.add_argument("--slots", type=int, default=16, help="Patches per image (the pooled mode's).")
    ap.add_argument("--rules", nargs="*", default=list(RULES), choices=RULES)
    ap.add_argument("--grid", nargs="*", help="Rows instead of the built-in ones (for every rule), "
                    "e.g. slic:n_segments=100@auto felzenszwalb:scale=300,min_size=250")
    ap.add_argument("--datasets", nargs="*", default=["camvid", "demo"])
    ap.add_argument("--cache-dir", default="cache")
    add_out_argument(ap, "patch_area")
    args = ap.parse_args()
    import torch

    from pipeline.superpixels import resolve_backend, segment

    torch.set_num_threads(1)
    loaders = {"camvid": lambda: camvid_images(args.images),
               "demo": lambda: demo_images(args.images, args.cache_dir)}
    rows = []
    t_start = time.process_time()
    for name in args.datasets:
        images = loaders[name]()
        if not images:
            print(f"{name}: no images, skipped")
            continue
        maps: dict = {}
        for rule in args.rules:
            for method, params, backend in (parse_grid(args.grid) if args.grid else GRID[rule]):
                backend = resolve_backend(method, backend)
                key = (method, json.dumps(params, sort_keys=True), backend)
                if key not in maps:
                    maps[key] = [segment(im, method, backend=backend, **params) for im in images]
                labels = maps[key]
                row = {"dataset": name, "hw": list(images[0].shape[:2]), "images": len(images),
                       "rule": rule, "method": method, "params": params, "backend": backend,
                       **whole_image_stats(labels, args.crop),
                       "loss": loss_patch_stats(images, labels, crop=args.crop, views=args.views,
                                                slots=args.slots, rule=rule)}
                rows.append(row)
                lo = row["loss"]
                print(f"{name:7s} {rule:6s} {method:12s} {json.dumps(params):38s} {backend:9s} "
                      f"median {lo['median']:5.0f} pw {lo['pixel_weighted']:5.0f} slots "
                      f"{lo['slots']:5.2f} (distinct {lo['distinct']:5.2f}) usable {lo['usable']:5.1f}",
                      flush=True)
    meta = {"crop": args.crop, "views": args.views, "slots": args.slots,
            "cpu_seconds": round(time.process_time() - t_start, 1), "rows": rows}
    windows = "; ".join(f"{r}: {rule_window(r, args.crop)[0]}..{rule_window(r, args.crop)[1] or 'any'} px, "
                        f"fill {rule_window(r, args.crop)[2]}" for r in args.rules)
    lines = [f"Patches the local loss uses at crop {args.crop}, {args.slots} slots per image, "
             f"{args.views} MoCo-v2 view pairs per image, areas in px of the {args.crop} x "
             f"{args.crop} view (both views). Window of each rule: {windows}. Whole image: the "
             f"map resized to the crop, every superpixel.", "",
             "| data | rule | method | parameters | backend | median (px) | pixel-weighted (px) | "
             f"slots filled (of {args.slots}) | distinct in slots | usable / pair | "
             "whole image: median | whole image: pixel-weighted | superpixels / image |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = ", ".join(f"{k} {v:g}" for k, v in r["params"].items())
        lo = r["loss"]
        lines.append(f"| {r['dataset']} ({r['hw'][1]}x{r['hw'][0]}) | {r['rule']} | {r['method']} | "
                     f"{p} | {r['backend']} | {lo['median']:.0f} | {lo['pixel_weighted']:.0f} | "
                     f"{lo['slots']:.2f} | {lo['distinct']:.2f} | {lo['usable']:.1f} | "
                     f"{r['median_area']:.0f} | {r['pixel_weighted_area']:.0f} | "
                     f"{r['segments_per_image']:.0f} |")
    print("\n".join(lines))
    write_result(args.out, meta, table="\n".join(lines),
                 key=f"{', '.join(args.datasets)}, rules {', '.join(args.rules)}"
                     + (f", grid {' '.join(args.grid)}" if args.grid else ""))


if __name__ == "__main__":
    main()
