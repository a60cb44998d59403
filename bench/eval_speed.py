"""Evaluator episodes/s: this tree against a baseline git revision, in the same run.

The baseline revision's code is exported with ``git archive`` into a temporary folder and
``python -m bench.fss_eval`` (everything ``qgnet-eval fss`` does: loading, test resize,
model, scoring at the original resolution) runs alternately from that tree and from this
one, ``--rounds`` times each, so drift of a shared machine hits both sides alike. Prints and
writes (``--out``) the per-round rates and CPU seconds, the medians and the ratio this /
baseline::

    python -m bench.eval_speed --baseline 82a5b61 --cache-dir /tmp/fid/camvid/cache \
        --dataset camvid --crop 97 --episodes 60 --rounds 3 --threads 1 \
        --this-args "--batch-size 4" --out bench/results/eval_speed.json

Extra ``bench.fss_eval`` options for one side only go in ``--baseline-args`` /
``--this-args`` (the baseline evaluator has batch 1 by default); the record's key is
``--this-args`` (one record per setting of this side).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, add_out_argument, children_cpu_seconds, write_result


def run_once(tree: Path, common: list[str], extra: list[str]) -> dict:
    """One ``bench.fss_eval`` run from ``tree`` (its JSON line, plus the CPU seconds of the
    child process: robust to the other jobs of a shared machine)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cpu = children_cpu_seconds()
    out = subprocess.run([sys.executable, "-m", "bench.fss_eval", *common, *extra],
                         cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return {**json.loads(out.strip().splitlines()[-1]),
            "cpu_s": round(children_cpu_seconds() - cpu, 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="git revision of the baseline evaluator")
    p.add_argument("--dataset", default="folder")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--crop", type=int, default=97)
    p.add_argument("--episodes", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prior", default="imagenet")
    p.add_argument("--baseline-args", default="")
    p.add_argument("--this-args", default="")
    add_out_argument(p, "eval_speed")
    a = p.parse_args(argv)
    common = ["--dataset", a.dataset, "--cache-dir", a.cache_dir, "--crop", str(a.crop),
              "--episodes", str(a.episodes), "--threads", str(a.threads), "--device", "cpu",
              "--workers", "1", "--prior", a.prior]
    rows = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "archive", a.baseline], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        for r in range(a.rounds):
            for side, tree, extra in (("baseline", base, a.baseline_args), ("this", ROOT, a.this_args)):
                res = run_once(tree, common, shlex.split(extra))
                rows[side].append(res)
                print(f"round {r}: {side} {res['episodes_per_s']:.3f} episodes/s "
                      f"(batch {res['batch_size']}, mIoU {res['miou']:.4f})", flush=True)
    med = {k: statistics.median(x["episodes_per_s"] for x in v) for k, v in rows.items()}
    out = {"baseline": a.baseline, "args": {k: str(v) for k, v in vars(a).items()},
           "median_episodes_per_s": med, "ratio_this_over_baseline": med["this"] / med["baseline"],
           "rounds": rows}
    print(json.dumps({k: out[k] for k in ("median_episodes_per_s", "ratio_this_over_baseline")}))
    write_result(a.out, out, key=f"this: {a.this_args or 'defaults'}; baseline {a.baseline}: "
                 f"{a.baseline_args or 'defaults'}")
    return out


if __name__ == "__main__":
    main()
