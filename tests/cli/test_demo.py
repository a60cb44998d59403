"""``make demo`` end to end at toy size: every stage runs, the two few-shot models train side
by side, and a second run skips what exists."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path, *extra):
    cmd = [sys.executable, "-m", "cli.demo", "--cache-dir", str(tmp_path / "cache"),
           "--runs", str(tmp_path / "runs"), "--prior-steps", "2", "--fss-steps", "2",
           "--episodes", "6", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_demo_end_to_end_then_resume(tmp_path):
    res = _demo(tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = tmp_path / "runs"
    assert "side by side" in res.stdout  # the parallel path ran
    summary = (runs / "summary.md").read_text()
    assert "QGNet (prior region map)" in summary and "baseline (--no-prior-map" in summary
    assert "QGNet - baseline:" in summary and "paired bootstrap 95 % CI" in summary
    cmp = json.loads((runs / "compare.json").read_text())
    assert cmp["episodes"] == 6 and cmp["diff"]["resamples"] == 2000
    for name in ("qgnet", "baseline"):
        (key,) = json.loads((runs / f"fss-{name}" / "results.json").read_text())
        assert key.startswith("fold0-1shot-pfenet-")
        assert (runs / "logs" / f"train-{name}.txt").is_file()
    assert json.loads((runs / "fss-qgnet" / "config.json").read_text())["use_prior_map"] is True
    assert sorted(p.suffix for p in (runs / "panels").iterdir()) >= [".png"]

    again = _demo(tmp_path, "--serial")  # everything exists: only the evaluations rerun
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("skipped") >= 4 and "qgnet-train fss" not in again.stdout
