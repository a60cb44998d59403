"""Run every benchmark script in bench/ one after another (``make bench``).

Each script prints a Markdown table and writes JSON next to docs/; the numbers that go
into docs/benchmarks.md come from these runs, with the machine and command noted there.
Extra arguments are passed as ``--quick`` when QGNET_BENCH_QUICK=1.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["superpixels.py", "stage.py", "episodes.py", "prior_step.py", "fss_eval.py"]


def main() -> int:
    quick = ["--quick"] if os.environ.get("QGNET_BENCH_QUICK") == "1" else []
    failed = []
    for name in ORDER:
        script = HERE / name
        if not script.exists():
            print(f"[bench] {name}: not present, skipped")
            continue
        print(f"\n[bench] === {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *quick])
        print(f"[bench] {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
