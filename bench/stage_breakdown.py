"""Per-image CPU breakdown of ``qgnet-prep superpixels`` and its 2-core ceiling (issue 14).

    python -m bench.stage_breakdown [--images 200] [--method slic] [--backend auto]
                                    [--out bench/results/stage_breakdown.json]

One thread, on the same 640x480 JPEG dataset as bench/stage.py: CPU ms per image of each
part the stage does (header read, JPEG decode, kernel, connectivity + finalize, zstd
compression of the map, the Zarr shard write without compression), then, in the same
run, the stage itself (threads scheduler, 2 and 1 workers) and a one-thread loop of
decode + the same kernel (the issue's baseline). Ratios are against that loop, so a loaded
machine depresses both sides alike. 'ceiling' = 2 cores / (decode + kernel + connectivity)
CPU time: what a perfect 2-worker stage could reach if nothing else cost anything. One
record per method and backend in the results file.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_out_argument, machine, markdown_table, timed, write_result
from bench.stage import make_dataset

T = time.thread_time


def breakdown(ds, ids, method, backend, params):
    """CPU ms per image of each part, one thread."""
    import zarr

    from pipeline.superpixels import segment
    from pipeline.superpixels.connectivity import enforce_connectivity, finalize

    parts = {k: 0.0 for k in ("header", "decode", "kernel", "connectivity", "compression",
                              "zarr write")}
    maps = []
    for image_id in ids:
        t0 = T()
        ds.image_size(image_id)
        t1 = T()
        img = ds.load_image(image_id)
        t2 = T()
        if method == "slic" and backend == "fast-slic":
            from fast_slic.avx2 import SlicAvx2

            n = params["n_segments"]
            raw = SlicAvx2(num_components=n, compactness=params["compactness"],
                           min_size_factor=0.0, num_threads=1).iterate(img, max_iter=params["max_iter"])
            t3 = T()
            lab0, k = enforce_connectivity(raw, min_size=(img.shape[0] * img.shape[1] // n) // 4)
            lab = finalize(lab0, k)
        else:  # numba kernels do their connectivity inside; counted as kernel
            lab = segment(img, method=method, backend=backend, **params)
            t3 = T()
        t4 = T()
        maps.append(lab.astype(np.uint16))
        for k, v in zip(("header", "decode", "kernel", "connectivity"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[k] += v
    codec = zarr.codecs.ZstdCodec(level=3)
    import numcodecs

    zstd = numcodecs.Zstd(level=codec.level)
    t0 = T()
    size = sum(len(zstd.encode(np.ascontiguousarray(m))) for m in maps)
    parts["compression"] = T() - t0
    # Zarr write without compression: the same shard layout, compressors=None
    tmp = Path(tempfile.mkdtemp(prefix="qgnet-bench-zarr-"))
    try:
        h, w = maps[0].shape
        arr = zarr.create_array(tmp / "a.zarr", shape=(len(maps), h, w), dtype="uint16",
                                chunks=(1, h, w), shards=(len(maps), h, w), compressors=None)
        t0 = time.process_time()  # zarr writes from its own event-loop thread
        arr[:] = np.stack(maps)
        parts["zarr write"] = time.process_time() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(ids)
    return {k: round(1e3 * v / n, 2) for k, v in parts.items()}, size / n


def loop_rate(ds, ids, method, backend, params):
    """The issue's baseline: one thread, decode + kernel (as segment() runs it), wall clock."""
    from pipeline.superpixels import segment

    kw = dict(params, num_threads=1) if backend == "fast-slic" else params
    seconds, _ = timed(lambda: [segment(ds.load_image(image_id), method=method, backend=backend,
                                        **kw) for image_id in ids])
    return len(ids) / seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--method", default="slic", choices=("slic", "felzenszwalb"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--scheduler", default="threads",
                    help="threads, or a dask.distributed address (tcp://...) for the stage runs")
    add_out_argument(ap, "stage_breakdown")
    args = ap.parse_args(argv)

    from pipeline.datasets import open_dataset
    from pipeline.superpixel_stage import build_superpixel_store, superpixel_params
    from pipeline.superpixels import resolve_backend, segment

    backend = resolve_backend(args.method, args.backend)
    key = superpixel_params(args.method, None, backend=backend)
    params = {k: key[k] for k in key if k not in ("backend", "limit")}
    work = Path(tempfile.mkdtemp(prefix="qgnet-bench-breakdown-"))
    try:
        source = make_dataset(work / "data", args.images)
        ds = open_dataset("folder", work / "data")
        ids = ds.ids("train")
        segment(ds.load_image(ids[0]), method=args.method, backend=backend, **params)  # warm-up
        parts, comp_bytes = breakdown(ds, ids, args.method, backend, params)
        rows = []
        for rep in range(2):  # loop, stage 2, stage 1, loop, stage 2, stage 1: same load
            loop = loop_rate(ds, ids, args.method, backend, params)
            for workers in (2, 1):
                out = work / f"s{rep}-{workers}.zarr"
                cpu, (store, rep_) = timed(lambda out=out, workers=workers: build_superpixel_store(
                    ds, split="train", method=args.method, backend=backend, out=out,
                    workers=workers, scheduler=args.scheduler, progress=False),
                    clock=time.process_time)
                rows.append({"workers": workers, "images_per_s": round(rep_.images_per_s, 1),
                             "loop_images_per_s": round(loop, 1),
                             "ratio_vs_loop": round(rep_.images_per_s / loop, 2),
                             "cpu_ms_per_image": round(1e3 * cpu / rep_.computed, 1),
                             "bytes_per_image": round(rep_.bytes_per_image),
                             "shards": f"{store.n_shards} x {store.shard_size}"})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    busy = parts["decode"] + parts["kernel"] + parts["connectivity"]
    result = {"source": source, "images": len(ids), "method": args.method, "backend": backend,
              "params": params, "scheduler": args.scheduler, "cpu_ms_per_image": parts,
              "zstd_bytes_per_image": round(comp_bytes),
              "ceiling_2_cores_images_per_s": round(2000 / busy, 1), "rows": rows}
    table = markdown_table(
        ["workers", "stage images/s", "1-thread loop images/s", "ratio", "CPU ms/image",
         "bytes/image", "shards"],
        [[r["workers"], r["images_per_s"], r["loop_images_per_s"], r["ratio_vs_loop"],
          r["cpu_ms_per_image"], r["bytes_per_image"], r["shards"]] for r in rows],
        align="rrrrrrl")
    print(f"{args.method} {backend} {params}, {len(ids)} images ({source}), {machine()}")
    print("CPU ms per image, one thread: " + ", ".join(f"{k} {v}" for k, v in parts.items())
          + f"; zstd {result['zstd_bytes_per_image']} B/image")
    print(f"2-core ceiling (decode + kernel + connectivity): {result['ceiling_2_cores_images_per_s']} images/s")
    print(table)
    write_result(args.out, result, key=f"{source.split(' (')[0]}, {args.method} {backend}", table=table)
    return result


if __name__ == "__main__":
    main()
