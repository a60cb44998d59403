"""Per-image time of the FSS training rotation: grid_sample + Pillow (now) vs map_coordinates.

PFENet's RandRotate on a PASCAL-sized image (500 x 375 x 3 float32, the size after
RandScale), angle in [-10, 10]. Both implementations run in the same process, one torch
thread (as in a DataLoader worker), alternating, so the ratio holds on a loaded machine; the output also reports how close the
two results are (mean |diff| on the 0..255 scale, label agreement).

    python -m bench.fss_rotate [--repeats 20] [--out bench/results/fss_rotate.json]

``rotate_map_coordinates`` is the implementation before issue 13 §7, kept here as this
benchmark's baseline (tests/model/fss/test_transforms.py has its own reference).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import add_out_argument, write_result
from model.fss import transforms as T


def rotate_map_coordinates(image, label, angle, *, pad=T.MEAN, ignore=255):
    """The implementation before issue 13 §7 (scipy.ndimage.map_coordinates, bilinear)."""
    from scipy import ndimage

    h, w = label.shape
    m = T.rotation_matrix(angle, h, w)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    img = np.asarray(image, dtype=np.float32)
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = ndimage.map_coordinates(img[..., c], [sy, sx], order=1, mode="constant",
                                              cval=float(pad[c]))
    ny, nx = np.floor(sy + 0.5).astype(np.int64), np.floor(sx + 0.5).astype(np.int64)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    lab = np.full((h, w), ignore, dtype=label.dtype)
    lab[inside] = label[ny[inside], nx[inside]]
    return out, lab


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    add_out_argument(ap, "fss_rotate")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    from skimage import data, transform

    image = (transform.resize(data.astronaut(), (375, 500)) * 255).astype(np.float32)
    label = (image[..., 0] > 128).astype(np.uint8)
    rng = np.random.default_rng(0)
    angles = rng.uniform(-10, 10, args.repeats)
    t_old = t_new = 0.0
    diffs, agree = [], []
    for a in angles:
        t0 = time.perf_counter()
        ref = rotate_map_coordinates(image, label, a)
        t1 = time.perf_counter()
        new = T.rotate(image, label, a)
        t2 = time.perf_counter()
        t_old, t_new = t_old + t1 - t0, t_new + t2 - t1
        diffs.append(float(np.abs(new[0] - ref[0]).mean()))
        agree.append(float((new[1] == ref[1]).mean()))
    res = {"image": "500 x 375 x 3 float32", "repeats": args.repeats,
           "ms_map_coordinates": 1e3 * t_old / args.repeats, "ms_now": 1e3 * t_new / args.repeats,
           "speedup": t_old / max(t_new, 1e-12), "mean_abs_diff": float(np.mean(diffs)),
           "label_agreement": float(np.min(agree))}
    print(json.dumps(res, indent=1))
    write_result(args.out, res, key="500 x 375, one torch thread")
    return res


if __name__ == "__main__":
    main()
