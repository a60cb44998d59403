"""Run every benchmark script in bench/ one after another (``make bench``).

    python -m bench.run_all

The prior-step and few-shot benchmarks need a dataset with a superpixel store, masks and
episodes: by default they use the built-in demo dataset, whose caches this script prepares
first with the real ``qgnet-prep`` commands (a no-op when they exist). The superpixel and
stage benchmarks read ../shared/data/camvid when present and scikit-image's sample photos
otherwise. Set QGNET_BENCH_QUICK=1 for a short kernel benchmark. Every script's ratios are
measured against a baseline in its own run (docs/benchmarks.md).

Each script merges its record into its one result file, ``bench/results/<name>.json``
(bench/common.py); the numbers quoted in docs/benchmarks.md come from these scripts, with
the machine and command noted there. Scripts that need data this machine may not have
(CamVid stores, trained checkpoints, a GPU, a baseline revision) are not run here: their
commands are in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS, ROOT, timed


def _prep(cache: str) -> Path:
    """Demo dataset + SLIC store + masks + fold-0 episodes; returns the SLIC store path."""
    for argv in (["demo"], ["superpixels", "--dataset", "demo", "--method", "slic"],
                 ["masks", "--dataset", "demo", "--split", "train"],
                 ["masks", "--dataset", "demo", "--split", "val"],
                 ["episodes", "--dataset", "demo", "--fold", "0", "--shot", "1"]):
        subprocess.run([sys.executable, "-m", "cli.prep", *argv, "--cache-dir", cache,
                        *(["--no-progress"] if argv[0] in ("superpixels", "masks") else [])],
                       check=True, cwd=ROOT)
    from pipeline.superpixel_stage import locate_superpixel_store

    return locate_superpixel_store("demo", "train", "slic", cache_dir=cache).path


def jobs(cache: str, store: Path, *, quick: bool) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every benchmark run here, in order."""
    demo_root = str(Path(cache) / "demo" / "data")

    def out(name: str) -> list[str]:
        return ["--out", str((RESULTS / f"{name}.json").relative_to(ROOT))]  # cwd is ROOT

    return [
        ("superpixels", [*out("superpixels"), *(["--quick"] if quick else [])]),
        ("stage", out("stage")),
        ("episodes", out("episodes")),
        ("prior_step", ["--dataset", "demo", "--root", demo_root, "--store", str(store),
                        "--crop", "128", *out("prior_step")]),
        ("fss_eval", ["--dataset", "demo", "--cache-dir", cache, "--crop", "161",
                      *out("fss_eval")]),
        # issue 14: Felzenszwalb contract, stage breakdown per method, cluster vs threads,
        # few-shot loader per core at the paper's crop
        ("fh_contract", out("fh_contract")),
        ("stage_breakdown", ["--method", "slic", *out("stage_breakdown")]),
        ("stage_breakdown", ["--method", "slic", "--backend", "numba", *out("stage_breakdown")]),
        ("stage_breakdown", ["--method", "felzenszwalb", "--images", "100",
                             *out("stage_breakdown")]),
        ("cluster", out("cluster")),
        ("fss_loader", ["--dataset", "demo", "--cache-dir", cache, "--crop", "473",
                        *out("fss_loader")]),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    quick = os.environ.get("QGNET_BENCH_QUICK") == "1"
    cache = os.environ.get("QGNET_CACHE_DIR", str(ROOT / "cache"))
    if args.list:
        for name, argv_ in jobs(cache, Path("<the demo's SLIC store>"), quick=quick):
            print(f"python -m bench.{name} {' '.join(argv_)}")
        return 0
    store = _prep(cache)
    failed = []
    for name, args in jobs(cache, store, quick=quick):
        print(f"\n[bench] === python -m bench.{name} {' '.join(args)} ===", flush=True)
        seconds, rc = timed(lambda name=name, args=args: subprocess.call(
            [sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT))
        print(f"[bench] {name}: exit {rc} after {seconds:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
