"""Felzenszwalb contract check: scikit-image's promises, kept by our backends.

    python -m bench.fh_contract [--out bench/results/fh_contract.json]

1. min_size held (the peer of scikit-image's own ``test_minsize``): coins (a crop and the
   whole image, grayscale stacked to RGB) and coffee (every 4th pixel), sigma 3, scale 1,
   min_size 10..90: the smallest segment of each backend must be >= min_size.
2. Segment counts against raw scikit-image (``skimage.segmentation.felzenszwalb``) on real
   photos (CamVid val, 480x360, every 8th image) at the default parameters and at two
   finer settings; the contract asks for counts within 5 %.
"""
from __future__ import annotations

import argparse

import numpy as np

from bench.common import CAMVID, add_out_argument, write_result
from pipeline.superpixels import available_backends, felzenszwalb

SETTINGS = ({"scale": 1000.0, "sigma": 0.8, "min_size": 1000},
            {"scale": 300.0, "sigma": 0.8, "min_size": 200},
            {"scale": 100.0, "sigma": 0.5, "min_size": 50})


def peer_images():
    from skimage import data

    coins = np.stack([data.coins()] * 3, -1)
    return {"coins crop": coins[20:168, 0:128], "coins": coins, "coffee/4": data.coffee()[::4, ::4]}


def main():
    from PIL import Image
    from skimage.segmentation import felzenszwalb as sk_fh

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(ap, "fh_contract")
    args = ap.parse_args()
    backends = available_backends("felzenszwalb")
    result = {"min_size": [], "counts": []}
    lines = []

    def say(line=""):
        print(line)
        lines.append(line)

    say("| image | min_size | " + " | ".join(f"{b}: n, smallest" for b in backends)
        + " | raw skimage: n, smallest |")
    say("|---|---:|" + "---:|" * (len(backends) + 1))
    for name, img in peer_images().items():
        for min_size in range(10, 100, 10):
            row = {"image": name, "min_size": min_size}
            cells = []
            for b in [*backends, "raw skimage"]:
                if b == "raw skimage":
                    lab = sk_fh(img, scale=1, sigma=3, min_size=min_size, channel_axis=-1) + 1
                else:
                    lab = felzenszwalb(img, scale=1, sigma=3, min_size=min_size, backend=b)
                sizes = np.bincount(lab.ravel())[1:]
                row[b] = {"n": int(lab.max()), "smallest": int(sizes.min())}
                cells.append(f"{int(lab.max())}, {int(sizes.min())}"
                             + ("" if sizes.min() >= min_size else " **FAIL**"))
            result["min_size"].append(row)
            say(f"| {name} | {min_size} | " + " | ".join(cells) + " |")
    paths = sorted((CAMVID / "val" / "images").glob("*.jpg"))[::8]
    say(f"\nSegment counts vs raw scikit-image, {len(paths)} CamVid val photos (480x360)")
    say("| scale, sigma, min_size | skimage n | " + " | ".join(f"{b} n (ratio)" for b in backends) + " |")
    say("|---|---:|" + "---:|" * len(backends))
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    for s in SETTINGS:
        ref = sum(int(sk_fh(im, channel_axis=-1, **s).max()) + 1 for im in photos)
        row = {"params": s, "skimage": ref}
        for b in backends:
            row[b] = sum(int(felzenszwalb(im, backend=b, **s).max()) for im in photos)
        result["counts"].append(row)
        say(f"| {s['scale']:g}, {s['sigma']:g}, {s['min_size']} | {ref} | "
            + " | ".join(f"{row[b]} ({row[b] / ref:.3f})" for b in backends) + " |")
    write_result(args.out, result, key="contract", table="\n".join(lines))


if __name__ == "__main__":
    main()
