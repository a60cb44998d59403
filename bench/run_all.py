"""Run every benchmark script in bench/ one after another (``make bench``).

The prior-step and few-shot-eval benchmarks need a dataset with a superpixel store, masks
and episodes: by default they use the built-in demo dataset, whose caches this script
prepares first with the real ``qgnet-prep`` commands (a no-op when they exist). The
superpixel and stage benchmarks read ../shared/data/camvid when present and scikit-image's
sample photos otherwise. Set QGNET_BENCH_QUICK=1 for a short kernel benchmark. Every
script's ratios are measured against a baseline in its own run (docs/benchmarks.md).

Results land in bench/results/ (JSON + Markdown); the numbers quoted in
docs/benchmarks.md come from these scripts, with the machine and command noted there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def _prep(cache: str) -> Path:
    """Demo dataset + SLIC store + masks + fold-0 episodes; returns the SLIC store path."""
    for argv in (["demo"], ["superpixels", "--dataset", "demo", "--method", "slic"],
                 ["masks", "--dataset", "demo", "--split", "train"],
                 ["masks", "--dataset", "demo", "--split", "val"],
                 ["episodes", "--dataset", "demo", "--fold", "0", "--shot", "1"]):
        subprocess.run([sys.executable, "-m", "cli.prep", *argv, "--cache-dir", cache,
                        *(["--no-progress"] if argv[0] in ("superpixels", "masks") else [])],
                       check=True, cwd=ROOT)
    sys.path.insert(0, str(ROOT))
    from pipeline.superpixel_stage import locate_superpixel_store

    return locate_superpixel_store("demo", "train", "slic", cache_dir=cache).path


def main() -> int:
    quick = os.environ.get("QGNET_BENCH_QUICK") == "1"
    cache = os.environ.get("QGNET_CACHE_DIR", str(ROOT / "cache"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = _prep(cache)
    demo_root = str(Path(cache) / "demo" / "data")
    jobs = [
        ("superpixels.py", ["--out", str(RESULTS / "superpixels.json"), *(["--quick"] if quick else [])]),
        ("stage.py", ["--out", str(RESULTS / "stage.json")]),
        ("episodes.py", []),
        ("prior_step.py", ["--dataset", "demo", "--root", demo_root, "--store", str(store),
                           "--crop", "128", "--out", str(RESULTS / "prior_step")]),
        ("fss_eval.py", ["--dataset", "demo", "--cache-dir", cache, "--crop", "161",
                         "--out", str(RESULTS / "fss_eval.json")]),
        # issue 14: Felzenszwalb contract, stage breakdown per method, cluster vs threads,
        # few-shot loader per core at the paper's crop
        ("fh_contract.py", ["--out", str(RESULTS / "fh_contract.json")]),
        ("stage_breakdown.py", ["--method", "slic", "--out", str(RESULTS / "stage_breakdown_slic.json")]),
        ("stage_breakdown.py", ["--method", "slic", "--backend", "numba",
                                "--out", str(RESULTS / "stage_breakdown_slic_numba.json")]),
        ("stage_breakdown.py", ["--method", "felzenszwalb", "--images", "100",
                                "--out", str(RESULTS / "stage_breakdown_felzenszwalb.json")]),
        ("cluster.py", ["--out", str(RESULTS / "cluster.json")]),
        ("fss_loader.py", ["--dataset", "demo", "--cache-dir", cache, "--crop", "473",
                           "--out", str(RESULTS / "fss_loader.json")]),
    ]
    failed = []
    for name, args in jobs:
        print(f"\n[bench] === {name} {' '.join(args)} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / name), *args], cwd=ROOT)
        print(f"[bench] {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
