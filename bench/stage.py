"""Whole-stage throughput of ``qgnet-prep superpixels`` and ``qgnet-prep masks``.

End to end, as the command runs it: read + decode JPEG + superpixels + Zarr write (zstd,
sharded), on a temporary folder-layout dataset of real photos at 640x480 (CamVid street
scenes from ../shared/data, 480x360 resized to 640x480 and re-encoded as JPEG q90; without
CamVid, scikit-image's sample photos resized, flipped and cropped).

Every configuration runs with 2 workers (threads) and with 1 worker, in the same process,
so the 2-vs-1 ratio is measured on the same files under the same machine load. Kernels are
warmed up first (numba loads its cached machine code once per process; not counted).

    python -m bench.stage --images 200 --out bench/results/stage.json

One record per image count in the results file.

The machine is shared: treat the numbers as rough.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import CAMVID, add_out_argument, machine, markdown_table, write_result

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
                  "car", "pedestrian", "bicyclist")
COCO_TRAIN = 82_783
SIZE = (640, 480)  # (W, H)


def make_dataset(root: Path, n: int) -> str:
    """Write ``n`` 640x480 JPEGs (+ index masks) in the folder layout; returns the source."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if CAMVID.is_dir():
        pairs = sorted((CAMVID / s / "images" / f.name, CAMVID / s / "masks" / (f.stem + ".png"))
                       for s in ("train", "val", "test") for f in (CAMVID / s / "images").glob("*.jpg"))
        pairs = pairs[:: max(len(pairs) // n, 1)][:n]
        for i, (img_path, mask_path) in enumerate(pairs):
            img = Image.open(img_path).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR)
            img.save(root / "images" / f"{i:05d}.jpg", quality=90)
            mask = np.asarray(Image.open(mask_path).resize(SIZE, Image.Resampling.NEAREST))
            mask = np.where(mask >= 11, 255, mask + 1).astype(np.uint8)  # 0..10 -> 1..11, void -> 255
            Image.fromarray(mask).save(root / "masks" / f"{i:05d}.png")
        (root / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")
        source = f"CamVid ({len(pairs)} photos, 480x360 -> 640x480, JPEG q90)"
    else:
        print(f"CamVid not found at {CAMVID}; using scikit-image sample photos instead")
        from skimage import data

        photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
        rng = np.random.default_rng(0)
        for i in range(n):
            img = Image.fromarray(photos[i % len(photos)])
            w, h = img.size
            x0, y0 = rng.integers(0, w // 8), rng.integers(0, h // 8)
            img = img.crop((x0, y0, x0 + w * 7 // 8, y0 + h * 7 // 8)).resize(SIZE)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img.save(root / "images" / f"{i:05d}.jpg", quality=90)
            grey = np.asarray(img.convert("L"))
            Image.fromarray((grey // 86 + 1).astype(np.uint8)).save(root / "masks" / f"{i:05d}.png")
        (root / "classes.txt").write_text("dark\nmid\nbright\n")
        source = f"scikit-image sample photos ({n}, resized to 640x480, JPEG q90)"
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "val.txt").write_text(ids[0] + "\n")
    return source


def run(label, build, work: Path, workers: int) -> dict:
    out = work / f"{label.replace(' ', '_')}-{workers}.zarr"
    cpu = time.process_time()
    store, report = build(out=out, workers=workers)
    cpu = time.process_time() - cpu  # all threads of this process
    assert report.failures == 0, store.failures
    row = {"config": label, "workers": workers, "images": report.computed,
           "shard_size": store.shard_size, "shards": store.n_shards,
           "compute_s": round(report.compute_seconds, 2), "total_s": round(report.seconds, 2),
           "images_per_s": round(report.images_per_s, 1),
           "images_per_s_total": round(report.computed / report.seconds, 1),
           "bytes_per_image": round(report.bytes_per_image),
           "cpu_ms_per_image": round(1e3 * cpu / report.computed, 1),
           # what 2 idle cores would give if the stage scaled perfectly (CPU-bound bound)
           "idle_2core_images_per_s": round(2 * report.computed / cpu, 1),
           "coco_train_hours": round(COCO_TRAIN / report.images_per_s / 3600, 2)}
    print(f"  {label:<28s} workers={workers}: {row['images_per_s']:6.1f} images/s "
          f"({row['images_per_s_total']:.1f} incl. sizes/layout), "
          f"{row['cpu_ms_per_image']} CPU ms/image, {row['bytes_per_image']} B/image", flush=True)
    shutil.rmtree(out)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    add_out_argument(ap, "stage")
    ap.add_argument("--workdir", type=Path, help="temporary folder (default: system temp)")
    ap.add_argument("--compare-shard-size", type=int, default=128,
                    help="also run SLIC (auto backend) with this fixed shard size, to show what "
                         "the automatic size gains on a small split (0: skip)")
    args = ap.parse_args(argv)

    from pipeline.datasets import open_dataset
    from pipeline.mask_stage import build_mask_store
    from pipeline.superpixel_stage import build_superpixel_store
    from pipeline.superpixels import resolve_backend, segment

    work = Path(tempfile.mkdtemp(prefix="qgnet-bench-stage-", dir=args.workdir))
    try:
        source = make_dataset(work / "data", args.images)
        ds = open_dataset("folder", work / "data")
        n = len(ds.ids("train"))
        print(f"dataset: {source}; {n} images in {work / 'data'}")
        configs = [("slic auto", "slic", "auto", None), ("slic numba", "slic", "numba", None),
                   ("felzenszwalb numba", "felzenszwalb", "numba", None)]
        if args.compare_shard_size:
            configs.insert(1, ("slic auto", "slic", "auto", args.compare_shard_size))
        probe = ds.load_image(ds.ids("train")[0])
        rows = []
        for label, method, backend, shard_size in configs:
            concrete = resolve_backend(method, backend)
            label = f"{method} {concrete}" + (" (auto)" if backend == "auto" else "")
            if shard_size:
                label += f", {shard_size}-image shards"
            segment(probe, method=method, backend=concrete)  # warm-up: numba cache / fast-slic

            def build(out, workers, method=method, concrete=concrete, shard_size=shard_size):
                return build_superpixel_store(ds, split="train", method=method, backend=concrete,
                                              out=out, workers=workers, progress=False,
                                              shard_size=shard_size)

            for workers in (2, 1):
                rows.append(run(label, build, work, workers))

        def build_masks(out, workers):
            return build_mask_store(ds, split="train", out=out, workers=workers, progress=False)

        for workers in (2, 1):
            rows.append(run("masks", build_masks, work, workers))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {(r["config"], r["workers"]): r for r in rows}
    for r in rows:
        serial = by[(r["config"], 1)]["images_per_s"]
        r["speedup_vs_1_worker"] = round(r["images_per_s"] / serial, 2) if serial else None
    result = {"source": source, "images": n, "image_size": f"{SIZE[0]}x{SIZE[1]}",
              "scheduler": "threads", "python": sys.version.split()[0], "rows": rows}
    table = markdown_table(
        ["stage", "workers", "shards x images", "images/s (compute)", "images/s (whole call)",
         "x vs 1 worker", "CPU ms/image", "images/s, 2 idle cores (bound)", "bytes/image",
         "COCO train2014 (h)"],
        [[r["config"], r["workers"], f"{r['shards']} x {r['shard_size']}", r["images_per_s"],
          r["images_per_s_total"], r["speedup_vs_1_worker"], r["cpu_ms_per_image"],
          r["idle_2core_images_per_s"], r["bytes_per_image"], r["coco_train_hours"]]
         for r in rows])
    print(f"\nStage throughput, {n} real photos at 640x480 ({source}), threads scheduler, "
          f"{machine()}; numbers are rough (shared machine).\n")
    print(table)
    print("\nCOCO hours = 82,783 / measured images/s (compute, this run). 'CPU ms/image' is "
          "the process CPU time per image (all threads); '2 idle cores' = 2000 / CPU ms, an "
          "upper bound for an unloaded 2-core machine.")
    write_result(args.out, result, key=f"{source.split(' (')[0]}, {n} images", table=table)
    return result


if __name__ == "__main__":
    main()
