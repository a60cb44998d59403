"""Superpixel kernel benchmark: speed and quality of every backend, single thread.

    .venv/bin/python bench/superpixels.py [--out docs/bench_superpixels.json] [--quick]
                                          [--method felzenszwalb]

Images: scikit-image's shipped photos resized to 640x480 (timing, agreement) and CamVid
val images at their native 480x360 (timing, and quality against the CamVid ground truth,
void id 11 ignored) when /work/shared/data/camvid (or $QGNET_CAMVID) exists. Each
backend is warmed up (numba compilation) before timing; times are medians per image of the
best of ``repeats`` runs, in CPU time of the calling thread (every kernel here runs on one
thread), which a loaded machine inflates far less than wall time. Speedup is skimage's
median over the backend's, measured in the same run.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.superpixels import available_backends, felzenszwalb, slic  # noqa: E402
from pipeline.superpixels.metrics import (  # noqa: E402
    achievable_segmentation_accuracy,
    boundary_recall,
    label_agreement,
    undersegmentation_error,
)

CAMVID = Path(os.environ.get("QGNET_CAMVID", Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"))
CAMVID_VOID = 11
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left")
CONFIGS = {
    "slic": dict(n_segments=400, compactness=10.0, max_iter=10),
    "felzenszwalb": dict(scale=1000.0, sigma=0.8, min_size=1000),
}


def load_images(quick: bool):
    import skimage.data as skdata
    from PIL import Image

    photos = []
    for name in PHOTOS[: 3 if quick else None]:
        try:
            img = getattr(skdata, name)()
        except Exception:  # some need pooch downloads; skip them
            continue
        img = img[..., :3] if img.ndim == 3 else np.stack([img] * 3, -1)
        photos.append((name, np.asarray(Image.fromarray(img).resize((640, 480), Image.BILINEAR))))
    camvid = []
    paths = sorted((CAMVID / "val" / "images").glob("*.jpg"))
    for p in paths[:: max(1, len(paths) // (4 if quick else 12))][: 4 if quick else 12]:
        gt = np.asarray(Image.open(p.parent.parent / "masks" / (p.stem + ".png")))
        camvid.append((p.stem, np.asarray(Image.open(p).convert("RGB")), gt))
    return photos, camvid


def run(fn, img, params, backend):
    extra = {"num_threads": 1} if fn is slic else {}
    return fn(img, backend=backend, **params, **extra)


def time_backend(fn, images, params, backend, repeats):
    run(fn, images[0], params, backend)  # warm-up: numba compile / cache load
    per_image = []
    for img in images:
        ts = []
        for _ in range(repeats):
            t = time.thread_time()
            run(fn, img, params, backend)
            ts.append(time.thread_time() - t)
        per_image.append(min(ts))  # best of repeats per image (noise from other jobs)
    return 1e3 * float(np.median(per_image))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="3 photos, 4 CamVid images, 1 repeat")
    ap.add_argument("--method", choices=("slic", "felzenszwalb"), help="only this method")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    photos, camvid = load_images(args.quick)
    print(f"{len(photos)} photos at 640x480, {len(camvid)} CamVid val images at 480x360"
          + ("" if camvid else f" (CamVid not found at {CAMVID})"), flush=True)
    rows = []
    for method, fn in (("slic", slic), ("felzenszwalb", felzenszwalb)):
        if args.method and method != args.method:
            continue
        params = CONFIGS[method]
        backends = available_backends(method)
        ref = {}
        if "skimage" in backends:  # reference labels for agreement
            ref = {name: run(fn, img, params, "skimage") for name, img in photos}
        for backend in backends:
            row = {"method": method, "backend": backend, "params": params}
            row["ms_640x480"] = time_backend(fn, [im for _, im in photos], params, backend, repeats)
            labels = {name: run(fn, img, params, backend) for name, img in photos}
            row["segments_640x480"] = float(np.mean([int(lab.max()) for lab in labels.values()]))
            if ref:
                row["ari_vs_skimage"] = float(np.mean([label_agreement(labels[n], ref[n]) for n in ref]))
            if camvid:
                row["ms_camvid"] = time_backend(fn, [im for _, im, _ in camvid], params, backend, repeats)
                q = {"segments": [], "br": [], "ue": [], "asa": []}
                for _, img, gt in camvid:
                    lab = run(fn, img, params, backend)
                    q["segments"].append(int(lab.max()))
                    q["br"].append(boundary_recall(lab, gt, ignore=CAMVID_VOID))
                    q["ue"].append(undersegmentation_error(lab, gt, ignore=CAMVID_VOID))
                    q["asa"].append(achievable_segmentation_accuracy(lab, gt, ignore=CAMVID_VOID))
                row.update({f"camvid_{k}": float(np.mean(v)) for k, v in q.items()})
            rows.append(row)
            print(f"  {method:12s} {backend:9s} {row['ms_640x480']:7.1f} ms", flush=True)
        sk = next((r for r in rows if r["method"] == method and r["backend"] == "skimage"), None)
        nb = next((r for r in rows if r["method"] == method and r["backend"] == "numba"), None)
        if method == "slic" and sk and nb and camvid:
            # quality at a matched segment count: skimage drops more small regions, so
            # rerun numba with n_segments scaled to land on skimage's CamVid count
            n_match = round(params["n_segments"] * sk["camvid_segments"] / nb["camvid_segments"])
            mp = dict(params, n_segments=n_match)
            row = {"method": method, "backend": f"numba (n_segments={n_match})", "params": mp}
            q = {"segments": [], "br": [], "ue": [], "asa": []}
            for _, img, gt in camvid:
                lab = run(fn, img, mp, "numba")
                q["segments"].append(int(lab.max()))
                q["br"].append(boundary_recall(lab, gt, ignore=CAMVID_VOID))
                q["ue"].append(undersegmentation_error(lab, gt, ignore=CAMVID_VOID))
                q["asa"].append(achievable_segmentation_accuracy(lab, gt, ignore=CAMVID_VOID))
            row.update({f"camvid_{k}": float(np.mean(v)) for k, v in q.items()})
            rows.append(row)
        for r in rows:
            if r["method"] == method and sk and "ms_640x480" in r:
                r["speedup_vs_skimage"] = sk["ms_640x480"] / r["ms_640x480"]
                if "ms_camvid" in r:
                    r["speedup_vs_skimage_camvid"] = sk["ms_camvid"] / r["ms_camvid"]

    head = ("| method | backend | ms 640x480 | speedup | segments | ARI vs skimage "
            "| ms CamVid | CamVid segments | BR | UE | ASA |")
    print()
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        def f(key, fmt, r=r):
            return format(r[key], fmt) if key in r else "-"
        print(f"| {r['method']} | {r['backend']} | {f('ms_640x480', '.1f')} | {f('speedup_vs_skimage', '.1f')}{'x' if 'speedup_vs_skimage' in r else ''} "
              f"| {f('segments_640x480', '.0f')} | {f('ari_vs_skimage', '.3f')} | {f('ms_camvid', '.1f')} "
              f"| {f('camvid_segments', '.0f')} | {f('camvid_br', '.3f')} | {f('camvid_ue', '.3f')} "
              f"| {f('camvid_asa', '.3f')} |")
    if args.out:
        meta = {"python": platform.python_version(), "machine": platform.machine(),
                "cpu_count": os.cpu_count(), "threads": 1, "repeats": repeats,
                "photos": [n for n, _ in photos], "camvid_images": [n for n, _, _ in camvid],
                "camvid_resolution": "native 480x360", "photo_resolution": "640x480"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
