"""What ``qgnet-prep info`` pays for reading every chunk (issue 22 §4: ``--verify``, the default).

Builds (once, in ``--work``) the mask store and the SLIC superpixel store of CamVid train
(367 photos, 480 x 360, from ../shared/data/camvid through the folder view of
bench/camvid_fss.py), then times, in this process, the summary ``qgnet-prep info`` prints
without reading the chunks (``--no-verify``) and with every chunk read back (the default),
alternating, best of ``--repeat``. Reported: CPU seconds (``time.process_time``, all threads
of the process, so a loaded machine inflates them less than wall time), the ratio, and the
verify cost per image.

    python -m bench.store_verify --work /tmp/qgnet-verify --out bench/results/store_verify.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.camvid_fss import make_folder
from bench.common import CAMVID, add_out_argument, markdown_table, timed, write_result


def cpu_seconds(fn) -> float:
    return timed(fn, clock=time.process_time)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/qgnet-verify"))
    ap.add_argument("--repeat", type=int, default=3)
    add_out_argument(ap, "store_verify")
    args = ap.parse_args(argv)
    if not CAMVID.is_dir():
        print(f"skipped: no CamVid at {CAMVID} (see /work/shared/data/README.md)")
        return 0
    from cli.prep_info import store_lines
    from pipeline.mask_stage import build_mask_store
    from pipeline.superpixel_stage import build_superpixel_store

    root = make_folder(CAMVID, args.work / "camvid")
    cache = args.work / "cache"
    masks, _ = build_mask_store("camvid", root=root, split="train", cache_dir=cache, workers=2,
                                progress=False)
    slic, _ = build_superpixel_store("camvid", root=root, split="train", method="slic",
                                     cache_dir=cache, workers=2, progress=False)
    rows = []
    for name, store in (("masks (uint8)", masks), ("slic superpixels (uint16)", slic)):
        quick, full = [], []
        for _ in range(args.repeat):  # alternating: the same machine state for both
            quick.append(cpu_seconds(lambda s=store: store_lines(s.path, verify=False)))
            full.append(cpu_seconds(lambda s=store: store_lines(s.path, verify=True)))
        lines, damaged = store_lines(store.path, verify=True)
        assert damaged == 0, lines
        rows.append({"store": name, "images": store.n, "map": list(store.map_shape),
                     "bytes_on_disk": store.nbytes_on_disk(), "no_verify_cpu_s": min(quick),
                     "verify_cpu_s": min(full), "ratio": min(full) / max(min(quick), 1e-9),
                     "verify_ms_per_image": (min(full) - min(quick)) / store.n * 1e3})
    table = markdown_table(
        ["store", "images", "on disk", "info --no-verify, CPU s", "info (verify), CPU s", "ratio",
         "verify, CPU ms per image"],
        [[r["store"], r["images"], f"{r['bytes_on_disk'] / 1e6:.1f} MB", f"{r['no_verify_cpu_s']:.3f}",
          f"{r['verify_cpu_s']:.3f}", f"{r['ratio']:.1f}x", f"{r['verify_ms_per_image']:.2f}"]
         for r in rows])
    print(table)
    write_result(args.out, {"repeat": args.repeat, "rows": rows}, key="CamVid train",
                 table=table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
