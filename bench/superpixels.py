"""Superpixel kernel benchmark: speed and quality of every backend, single thread.

    python -m bench.superpixels [--out bench/results/superpixels.json] [--quick]
                                [--method felzenszwalb]

Images: scikit-image's shipped photos resized to 640x480 (timing, agreement) and CamVid
val images at their native 480x360 (timing, and quality against the CamVid ground truth,
void id 11 ignored) when ../shared/data/camvid (or $QGNET_CAMVID) exists. Each
backend is warmed up (numba compilation) before timing; times are medians per image of the
best of ``repeats`` runs, in CPU time of the calling thread (every kernel here runs on one
thread), which a loaded machine inflates far less than wall time. Speedup is skimage's
median over the backend's, measured in the same run. One record per method in the results
file.
"""

from __future__ import annotations

from bench.common import pin_threads

pin_threads(1)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import CAMVID, add_out_argument, best_of, markdown_table, write_result  # noqa: E402
from pipeline.superpixels import available_backends, felzenszwalb, slic  # noqa: E402
from pipeline.superpixels.metrics import (  # noqa: E402
    achievable_segmentation_accuracy,
    boundary_recall,
    label_agreement,
    undersegmentation_error,
)

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
    """Median over images of the best of ``repeats`` (thread CPU ms), after a warm-up."""
    run(fn, images[0], params, backend)  # warm-up: numba compile / cache load
    per_image = [best_of(lambda img=img: run(fn, img, params, backend), repeats,
                         clock=time.thread_time)[0] for img in images]
    return 1e3 * float(np.median(per_image))


def camvid_quality(fn, params, backend, camvid) -> dict:
    """Mean segments, boundary recall, undersegmentation error and ASA on CamVid."""
    q = {"segments": [], "br": [], "ue": [], "asa": []}
    for _, img, gt in camvid:
        lab = run(fn, img, params, backend)
        q["segments"].append(int(lab.max()))
        q["br"].append(boundary_recall(lab, gt, ignore=CAMVID_VOID))
        q["ue"].append(undersegmentation_error(lab, gt, ignore=CAMVID_VOID))
        q["asa"].append(achievable_segmentation_accuracy(lab, gt, ignore=CAMVID_VOID))
    return {f"camvid_{k}": float(np.mean(v)) for k, v in q.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(ap, "superpixels")
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
                row.update(camvid_quality(fn, params, backend, camvid))
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
            row.update(camvid_quality(fn, mp, "numba", camvid))
            rows.append(row)
        for r in rows:
            if r["method"] == method and sk and "ms_640x480" in r:
                r["speedup_vs_skimage"] = sk["ms_640x480"] / r["ms_640x480"]
                if "ms_camvid" in r:
                    r["speedup_vs_skimage_camvid"] = sk["ms_camvid"] / r["ms_camvid"]

    table = format_table(rows)
    print("\n" + table)
    meta = {"threads": 1, "repeats": repeats, "photos": [n for n, _ in photos],
            "camvid_images": [n for n, _, _ in camvid], "camvid_resolution": "native 480x360",
            "photo_resolution": "640x480"}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        write_result(args.out, {"meta": meta, "rows": mine}, key=method, table=format_table(mine))


def format_table(rows) -> str:
    def f(r, key, fmt, unit=""):
        return format(r[key], fmt) + unit if key in r else "-"

    return markdown_table(
        ["method", "backend", "ms 640x480", "speedup", "segments", "ARI vs skimage",
         "ms CamVid", "CamVid segments", "BR", "UE", "ASA"],
        [[r["method"], r["backend"], f(r, "ms_640x480", ".1f"), f(r, "speedup_vs_skimage", ".1f", "x"),
          f(r, "segments_640x480", ".0f"), f(r, "ari_vs_skimage", ".3f"), f(r, "ms_camvid", ".1f"),
          f(r, "camvid_segments", ".0f"), f(r, "camvid_br", ".3f"), f(r, "camvid_ue", ".3f"),
          f(r, "camvid_asa", ".3f")] for r in rows], align="ll" + "r" * 9)


if __name__ == "__main__":
    main()
