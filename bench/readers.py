"""The readers of issue 19 on the real data at hand, through the real stages.

1. **labelme's COCO-style json** (``../shared/data/voc_labelme_examples``, three real VOC 2011
   photos with polygons): named by a ``dataset.toml`` (the ``coco-json`` reader), decoded by
   ``qgnet-prep masks``' stage function, each mask compared with the same photos' VOC export
   (palette PNGs drawn by labelme from the same polygons): classes present and the share of
   non-border pixels that agree.
2. **CamVid as a folder benchmark** (``../shared/data/camvid``, converted as
   ``bench/camvid_fss.py`` does): mask stores and the episodes of every fold with the defaults
   a bench command reads from ``pipeline.benchmarks.benchmark_for``.

    python -m bench.readers --work /tmp/qgnet-readers --out bench/results/readers.json

Prints a Markdown table per part and writes the JSON. Skips a part whose data is absent.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.camvid_fss import make_folder
from bench.common import CAMVID, SHARED_DATA, add_out_argument, write_result

LABELME = SHARED_DATA / "voc_labelme_examples" / "examples" / "instance_segmentation"


def labelme_part(work: Path) -> dict | None:
    from pipeline.datasets import open_dataset
    from pipeline.datasets.spec import SPEC_NAME
    from pipeline.mask_stage import build_mask_store

    coco = LABELME / "data_dataset_coco" / "annotations.json"
    if not coco.is_file():
        print(f"skipped: {coco} not found")
        return None
    root = work / "labelme-spec"
    root.mkdir(parents=True, exist_ok=True)
    (root / SPEC_NAME).write_text(f'format = "coco-json"\n[splits.val]\njson = "{coco}"\n')
    store, report = build_mask_store("labelme", root=root, split="val", cache_dir=work / "cache",
                                     workers=1, scheduler="sync", progress=False)
    ds = open_dataset("labelme", root)
    voc = open_dataset("pascal", LABELME / "data_dataset_voc")
    rows = []
    for i, image_id in enumerate(store.ids):
        ours, theirs = store.get(i), voc.load_mask(image_id)
        keep = theirs != 255
        rows.append({"id": image_id, "hw": list(ours.shape),
                     "classes": [ds.class_names[c - 1] for c in np.unique(ours) if 0 < c < 255],
                     "voc_classes": [voc.class_names[c - 1] for c in np.unique(theirs)
                                     if 0 < c < 255],
                     "agree": float((ours == theirs)[keep].mean()),
                     "compared_px": int(keep.sum())})
    print("\n| image | H x W | classes (json) | classes (VOC export) | agreement (non-border px) |")
    print("|---|---|---|---|---:|")
    for r in rows:
        print(f"| {r['id']} | {r['hw'][0]} x {r['hw'][1]} | {', '.join(r['classes'])} | "
              f"{', '.join(r['voc_classes'])} | {100 * r['agree']:.2f} % of {r['compared_px']} |")
    return {"store": str(store.path), "classes": ds.num_classes, "failures": len(store.failures),
            "images": rows}


def camvid_part(work: Path) -> dict | None:
    from pipeline.benchmarks import benchmark_for
    from pipeline.episode_stage import build_episodes
    from pipeline.mask_stage import build_mask_store

    if not (CAMVID / "train" / "images").is_dir():
        print(f"skipped: {CAMVID} not found")
        return None
    root = make_folder(CAMVID, work / "camvid")
    cache = work / "cache"
    for split in ("train", "val"):
        build_mask_store("camvid", root=root, split=split, cache_dir=cache, workers=2,
                         progress=False)
    b = benchmark_for("camvid")
    lines: list[str] = []
    summary = build_episodes("camvid", cache_dir=cache, shots=list(b.shots), seeds=[b.seed],
                             echo=lines.append)
    print("\n" + "\n".join(ln for ln in lines if "fold" in ln or "test " in ln))
    return {"benchmark": {k: v for k, v in vars(b).items()},
            "test": {f"fold{f}-shot{k}-seed{s}": {kk: v[kk] for kk in
                                                   ("episodes", "distinct_queries",
                                                    "distinct_supports", "skipped")}
                     for (f, k, s), v in summary["test"].items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qgnet-readers"))
    add_out_argument(ap, "readers")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    out = {"labelme": labelme_part(args.work), "camvid": camvid_part(args.work)}
    out["cpu_seconds"] = round(time.process_time() - t0, 1)
    print(f"\nCPU {out['cpu_seconds']} s")
    write_result(args.out, out, key="labelme json and CamVid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
