"""One huge image in a split: map read time and bytes per image, with and without the size limit.

Issue 15 item 9: maps are padded to the largest image of the store, so one 8000 x 8000 image
among CamVid frames made every map read slower. ``pipeline.store.MAX_MAP_SIDE`` (4096 px)
now refuses such an image (a failure record saying to downscale it) and keeps it out of the
padding. This script builds the same mask store twice through ``build_mask_store``:

* ``before``: ``MAX_MAP_SIDE`` raised to 10**9 (the old behaviour: everything padded);
* ``after``: the default limit.

Data: the first ``--n`` CamVid train masks (480 x 360, ../shared/data/camvid) plus one
8000 x 8000 mask (a CamVid mask scaled up, nearest neighbour), placed in the middle.
Reported: mean seconds per ``store.get(i)`` over the CamVid maps (``--repeat`` passes), bytes
on disk per stored image, the padded map shape.

    python -m bench.huge_image --n 64 --out bench/results/huge_image.json
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import pipeline.runner as runner
import pipeline.store as store_mod
from bench.common import CAMVID, add_out_argument, timed, write_result
from pipeline.datasets.base import Dataset
from pipeline.mask_stage import build_mask_store


class ArrayDataset(Dataset):
    """Masks held in memory; images are flat grey arrays of the mask's size."""

    name = "bench"
    class_names = tuple(f"c{i}" for i in range(11))
    splits = ("train",)

    def __init__(self, masks: dict[str, np.ndarray], root: Path):
        self.masks, self.root = masks, root

    def ids(self, split):
        return list(self.masks)

    def image_path(self, image_id):
        return self.root / f"{image_id}.png"  # never read: the images are in memory

    def image_size(self, image_id):
        return self.masks[image_id].shape

    def load_image(self, image_id):
        h, w = self.masks[image_id].shape
        return np.broadcast_to(np.uint8(128), (h, w, 3))

    def load_mask(self, image_id):
        m = self.masks[image_id].copy()
        m[m == 11] = 255
        return m


def read_times(store, idx, repeat: int) -> float:
    """Mean seconds per ``store.get`` over ``repeat`` passes over ``idx``."""
    seconds, _ = timed(lambda: [store.get(int(i)) for _ in range(repeat) for i in idx])
    return seconds / (repeat * len(idx))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="CamVid masks (plus one huge one).")
    p.add_argument("--side", type=int, default=8000, help="Side of the huge image.")
    p.add_argument("--repeat", type=int, default=3)
    add_out_argument(p, "huge_image")
    args = p.parse_args(argv)
    files = sorted((CAMVID / "train" / "masks").glob("*.png"))[: args.n]
    masks = {f.stem: np.asarray(Image.open(f)) for f in files}
    base = next(iter(masks.values()))
    ry, rx = -(-args.side // base.shape[0]), -(-args.side // base.shape[1])
    huge = np.kron(base, np.ones((ry, rx), np.uint8))[: args.side, : args.side]
    ids = list(masks)
    ids.insert(len(ids) // 2, "huge")
    masks = {k: (huge if k == "huge" else masks[k]) for k in ids}
    normal = [i for i, k in enumerate(ids) if k != "huge"]
    results = {}
    work = Path(tempfile.mkdtemp(prefix="qgnet-huge-"))
    try:
        ds = ArrayDataset(masks, work)
        for label, limit in (("before", 10**9), ("after", store_mod.MAX_MAP_SIDE)):
            store_mod.MAX_MAP_SIDE = runner.MAX_MAP_SIDE = limit
            build_s, (store, report) = timed(lambda label=label: build_mask_store(
                ds, split="train", out=work / f"{label}.zarr", workers=2, progress=False))
            t = read_times(store, normal, args.repeat)
            ok = int((store.hw[:, 0] > 0).sum())
            results[label] = {"read_ms_per_map": round(1e3 * t, 3),
                              "bytes_per_image": round(store.nbytes_on_disk() / ok, 1),
                              "store_bytes": store.nbytes_on_disk(), "images_stored": ok,
                              "failures": len(store.failures), "map_shape": store.map_shape,
                              "build_s": round(build_s, 1)}
            print(f"{label:6s}: padded to {store.map_shape}, {ok} images stored, "
                  f"{len(store.failures)} refused; read {1e3 * t:.2f} ms per CamVid map; "
                  f"{results[label]['bytes_per_image']:.0f} bytes per image; build {build_s:.1f} s",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    b, a = results["before"], results["after"]
    print(f"read time: {b['read_ms_per_map'] / a['read_ms_per_map']:.1f}x faster after; "
          f"bytes per image: {b['bytes_per_image'] / a['bytes_per_image']:.1f}x smaller after")
    write_result(args.out, {"args": {k: str(v) for k, v in vars(args).items()},
                            "results": results},
                 key=f"{args.n} CamVid masks + one {args.side} x {args.side}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
