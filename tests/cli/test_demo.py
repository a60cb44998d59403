"""``make demo`` end to end at toy size: every stage runs, the two few-shot models train side
by side, and a second run skips what exists."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One demo cache for the module's tests (the offline stages run once, then resume)."""
    return tmp_path_factory.mktemp("democache")


def _demo(tmp_path, *extra, cache=None):
    cmd = [sys.executable, "-m", "cli.demo", "--cache-dir", str(cache or tmp_path / "cache"),
           "--runs", str(tmp_path / "runs"), "--prior-steps", "2", "--fss-steps", "2",
           "--episodes", "6", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_demo_end_to_end_then_resume(tmp_path, cache):
    res = _demo(tmp_path, cache=cache)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = tmp_path / "runs"
    assert "side by side" in res.stdout  # the parallel path ran
    summary = (runs / "summary.md").read_text()
    assert "QGNet (prior region map)" in summary and "baseline (--no-prior-map" in summary
    assert "QGNet - baseline (PFENet scoring):" in summary and "paired bootstrap 95 % CI" in summary
    assert "mIoU (%), PFENet scoring" in summary and "mIoU (%), exact" in summary
    cmp = json.loads((runs / "compare.json").read_text())
    assert cmp["episodes"] == 6 and cmp["diff"]["resamples"] == 2000 and cmp["scoring"] == "pfenet"
    for name in ("qgnet", "baseline"):
        (key,) = json.loads((runs / f"fss-{name}" / "results.json").read_text())
        assert key.startswith("fold0-1shot-pfenet-")
        assert (runs / "logs" / f"train-{name}.txt").is_file()
    assert json.loads((runs / "fss-qgnet" / "config.json").read_text())["use_prior_map"] is True
    assert sorted(p.suffix for p in (runs / "panels").iterdir()) >= [".png"]
    # the trained model used on "your own" photos: bundle, masks, overlays, summary
    assert (runs / "model.qgnet").is_file()
    rows = (runs / "predict" / "summary.csv").read_text().splitlines()
    assert len(rows) >= 2 and all(r.endswith(",ok") for r in rows[1:]), rows
    assert len(list((runs / "predict").glob("*.overlay.jpg"))) == len(rows) - 1

    again = _demo(tmp_path, "--serial", cache=cache)  # everything exists: only the evaluations rerun
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("skipped") >= 4 and "qgnet-train fss" not in again.stdout


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next((ln for ln in (d / "status").read_text().splitlines()
                              if ln.startswith("State:")), "")
            except OSError:
                continue
            if text in cmd and "zombie" not in state:
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_demo_killed_during_few_shot_training_leaves_no_process_and_resumes(tmp_path, cache):
    """Issue 15 item 10: kill the demo's own process (not its group) once the first few-shot
    checkpoint exists: no training keeps running; `make demo` again continues the half-done
    trainings with --resume and prints the final table."""
    import os
    import signal
    import time

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "cli.demo", "--cache-dir", str(cache),
           "--runs", str(runs), "--prior-steps", "2", "--fss-steps", "8", "--fss-ckpt-every",
           "2", "--episodes", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "first.txt").open("w") as out:
        demo = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own group, for the cleanup only
    try:
        deadline = time.monotonic() + 600
        ckpts = [runs / "fss-qgnet" / "last.pt", runs / "fss-baseline" / "last.pt"]
        while not any(p.exists() for p in ckpts):
            assert demo.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no few-shot checkpoint after 10 minutes"
            time.sleep(0.5)
        assert _processes_mentioning(str(runs / "fss-")), "the trainings should be running"
        os.kill(demo.pid, signal.SIGKILL)  # the demo alone, as `kill -9 PID` would
        demo.wait()
        deadline = time.monotonic() + 60
        while (left := _processes_mentioning(str(runs))) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"children outlived the demo: {left}"
    finally:
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (runs / "summary.md").exists()

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "continuing the interrupted run" in again.stdout and "--resume" in again.stdout
    assert "already holds a run" not in again.stdout + again.stderr
    assert "| QGNet (prior region map) |" in again.stdout
    for name in ("qgnet", "baseline"):
        rows = [json.loads(ln) for ln in
                (runs / f"fss-{name}" / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if r["kind"] == "train"]
        assert steps == sorted(set(steps)) and steps[-1] == 8  # one clean curve
        assert not list((runs / f"fss-{name}").glob("*.tmp*"))
