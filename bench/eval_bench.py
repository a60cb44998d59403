"""The cross-benchmark table of ``qgnet-eval bench`` for one checkpoint, on the data this
machine has: the checkpoint's own dataset, CamVid as a folder benchmark (cross-domain), and
the six registry benchmarks (listed as absent when their test masks are not in the cache).

What it does, with the project's own commands (each a subprocess):

1. the checkpoint's own dataset first (its fold, from the cache it was trained with);
2. a folder-layout view of ``../shared/data/camvid`` in ``--work`` (``bench.camvid_fss``'s:
   images symlinked, masks rewritten to 1..11 / 255; nothing is copied into the repo);
3. ``qgnet-prep masks --dataset camvid --split val`` into the checkpoint's cache (skipped when
   the store is complete);
4. ``qgnet-eval bench --checkpoint CKPT --benchmarks OWN,camvid,pascal,coco,fss1000,
   deepglobe,isic,chest --shot 1,5``: the episode files it lacks are drawn from the mask
   stores with each benchmark's protocol; the table goes to ``--work``/table and, with
   ``--out``, into the result file with the wall time and CPU seconds of the command.

    python -m bench.eval_bench --checkpoint runs/demo/fss-qgnet/best.pt --cache-dir cache \\
        --out bench/results/eval_bench.json

Started again, ``qgnet-eval bench`` keeps the rows whose inputs did not change (resume).
Skips CamVid with a message when it is absent (the table then has the other rows).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.camvid_fss import make_folder
from bench.common import CAMVID, ROOT, add_out_argument, children_cpu_seconds, write_result

BENCHMARKS = ("camvid", "pascal", "coco", "fss1000", "deepglobe", "isic", "chest")


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    done = subprocess.run(args, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(args)}")


def own_dataset(checkpoint: Path) -> str:
    """The dataset the checkpoint was trained on (its run's config.json, else the checkpoint)."""
    beside = checkpoint.parent / "config.json"
    if beside.is_file():
        return json.loads(beside.read_text())["dataset"]
    from model.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, kind="fss")["config"]["dataset"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "runs/demo/fss-qgnet/best.pt")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "cache")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qgnet-eval-bench"))
    ap.add_argument("--shot", default="1,5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=None, help="cap per row (quick runs)")
    add_out_argument(ap, "eval_bench")
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"SKIP: no checkpoint at {args.checkpoint} (run `make demo` first, or pass "
              f"--checkpoint)")
        return 0
    py = sys.executable
    names = [own_dataset(args.checkpoint)]
    if CAMVID.is_dir():
        root = make_folder(CAMVID, args.work / "camvid-folder")
        if not (args.cache_dir / "camvid" / "masks" / "val.zarr" / "done").exists():
            run([py, "-m", "cli.prep", "masks", "--dataset", "camvid", "--root", str(root),
                 "--split", "val", "--cache-dir", str(args.cache_dir), "--no-progress"])
        names.append("camvid")
    else:
        print(f"CamVid not found at {CAMVID} (expected ../shared/data/camvid beside the repo): "
              f"its rows are left out")
    names += [n for n in BENCHMARKS if n not in names]
    table_dir = args.work / "table"
    cmd = [py, "-m", "cli.evaluate", "bench", "--checkpoint", str(args.checkpoint),
           "--cache-dir", str(args.cache_dir), "--benchmarks", ",".join(names),
           "--shot", args.shot, "--threads", str(args.threads), "--workers", "1",
           "--no-progress", "--out", str(table_dir)]
    if args.episodes:
        cmd += ["--episodes", str(args.episodes)]
    t0, cpu0 = time.time(), children_cpu_seconds()
    run(cmd)
    wall, cpu = time.time() - t0, children_cpu_seconds() - cpu0
    table = json.loads((table_dir / "bench.json").read_text())
    markdown = (table_dir / "bench.md").read_text()
    print(f"qgnet-eval bench: {wall:.0f} s wall, {cpu:.0f} CPU s")
    key = f"{Path(args.checkpoint).parent.name}, shots {args.shot}" + (
        f", capped {args.episodes}" if args.episodes else "")
    write_result(args.out, {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "bench": table},
                 key=key, table=markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
