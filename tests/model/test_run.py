"""The run skeleton (model/run.py) on few-shot training (issue 21 §1, issue 22 §1-§2): a copied
or moved run dir is resumed where it is, one writer per run dir, TensorBoard when installed,
and checkpoints written with the old "unset" spellings still resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.train_fss import fss as train_cli
from pipeline.errors import ConfigError, StoreError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(make_fss_toy):
    return make_fss_toy("runskel", n_episodes=4)


def _args(toy, *extra):
    return ["--dataset", "folder", "--cache-dir", toy["cache"], "--no-prior-map", "--crop", "33",
            "--batch-size", "2", "--epochs", "2", "--workers", "0", "--threads", "1",
            "--device", "cpu", "--val-episodes", "0", "--no-progress", "--log-every", "1", *extra]


def _cfg(toy, **kw):
    from model.fss.config import FssConfig

    common = dict(dataset="folder", use_prior_map=False, crop=33, batch_size=2, epochs=2,
                  workers=0, threads=1, val_episodes=0, log_every=1, progress=False,
                  cache_dir=toy["cache"], device="cpu")
    return FssConfig(**{**common, **kw})


def _steps(run: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _ok(r):
    assert r.exit_code == 0, r.output
    return r.output


def test_a_copied_run_dir_is_resumed_where_it_is_and_the_original_is_untouched(toy):
    """Issue 22 §1: cp -r A B; --resume B wrote into A (A's step 6 cut back, last.pt
    replaced) and printed "run dir: A"."""
    a, b = toy["base"] / "A", toy["base"] / "B"
    _ok(CliRunner().invoke(train_cli, _args(toy, "--max-steps", "2", "--out", str(a))))
    shutil.copytree(a, b)
    out = _ok(CliRunner().invoke(train_cli, ["--resume", str(a), "--max-steps", "4"]))
    assert f"run dir: {a}" in out
    before = _snapshot(a)
    out = _ok(CliRunner().invoke(train_cli, ["--resume", str(b), "--max-steps", "3"]))
    assert f"run dir: {b}" in out
    assert _snapshot(a) == before  # A: steps 1-4, untouched
    assert _steps(a) == [1, 2, 3, 4] and _steps(b) == [1, 2, 3]
    ck = torch.load(b / "last.pt", weights_only=True)
    assert ck["step"] == 3 and ck["config"]["out"] == str(b)
    assert json.loads((b / "config.json").read_text())["out"] == str(b)
    # resuming by the checkpoint file names the same run dir
    out = _ok(CliRunner().invoke(train_cli, ["--resume", str(b / "last.pt"), "--max-steps", "4"]))
    assert f"run dir: {b}" in out and _snapshot(a) == before and _steps(b) == [1, 2, 3, 4]


def test_a_moved_run_dir_never_recreates_the_original(toy):
    a, c = toy["base"] / "moved-from", toy["base"] / "moved-to"
    _ok(CliRunner().invoke(train_cli, _args(toy, "--max-steps", "2", "--out", str(a))))
    a.rename(c)
    _ok(CliRunner().invoke(train_cli, ["--resume", str(c), "--max-steps", "3"]))
    assert not a.exists() and _steps(c) == [1, 2, 3]


def test_resume_with_out_naming_another_folder_is_refused(toy, tmp_path):
    a = toy["base"] / "refuse-out"
    _ok(CliRunner().invoke(train_cli, _args(toy, "--max-steps", "1", "--out", str(a))))
    r = CliRunner().invoke(train_cli, ["--resume", str(a), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "continues the run in" in r.output and not (tmp_path / "x").exists()


HOLDER = ("import sys, time; from pipeline.store import StoreLock; "
          "StoreLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(120)")


def test_a_second_writer_is_refused_naming_the_first(toy):
    """Issue 22 §2: two runs on one run dir both exited 0 with interleaved metrics."""
    run = toy["base"] / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = CliRunner().invoke(train_cli, _args(toy, "--max-steps", "1", "--out", str(run)))
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert f"run dir {run} is in use by pid {holder.pid} on host" in r.output
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is taken over, with a message
    lock = run.with_name(run.name + ".lock")
    assert lock.read_text().split()[0] == str(holder.pid)
    r = CliRunner().invoke(train_cli, _args(toy, "--max-steps", "1", "--out", str(run)))
    assert r.exit_code == 0, r.output
    assert f"taking over the stale lock of pid {holder.pid}" in r.stderr
    assert f"took over the stale lock of pid {holder.pid}" in (run / "train.log").read_text()
    assert not lock.exists()  # released at the end


def test_the_lock_is_held_in_process_too(toy):
    from model.fss.trainer import train_fss
    from pipeline.store import StoreLock

    run = toy["base"] / "held"
    with StoreLock(run, what="run dir"):
        with pytest.raises(StoreError, match=f"in use by pid {os.getpid()}"):
            train_fss(_cfg(toy, max_steps=1, out=str(run)))
    assert not run.exists()
    train_fss(_cfg(toy, max_steps=1, out=str(run)))  # free again
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_fss(_cfg(toy, max_steps=1, out=str(run)))


def test_legacy_checkpoint_with_zero_and_empty_unset_values_resumes(toy):
    """Issue 21 §2: configs written before None meant "unset" hold 0, "" and -1 for it."""
    from model.fss.trainer import train_fss

    run = toy["base"] / "legacy"
    train_fss(_cfg(toy, max_steps=2, out=str(run)))
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["config"].update(val_every=0, max_steps=0, ckpt_every=0, threads=0, resume="",
                        prior="", root=None)
    torch.save(ck, run / "last.pt")
    r = CliRunner().invoke(train_cli, ["--resume", str(run), "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    new = torch.load(run / "last.pt", weights_only=True)["config"]
    assert new["val_every"] is None and new["ckpt_every"] is None and new["prior"] is None
    assert new["threads"] is None and _steps(run) == [1, 2, 3]


def test_read_saved_maps_the_old_unset_spellings():
    from model.fss.config import FssConfig
    from model.prior.config import PriorConfig
    from pipeline.settings import read_saved

    old = {"crop": 0, "lr": 0.0, "backbone": "", "val_every": 0, "val_episodes": 0,
           "threads": 0, "seed": 0, "fold": 0, "out": "runs/x", "gone_option": 3}
    got = read_saved(FssConfig, old)
    assert (got["crop"], got["lr"], got["backbone"], got["val_every"], got["threads"]) == (
        None, None, None, None, None)
    assert (got["val_episodes"], got["seed"], got["fold"], got["out"]) == (0, 0, 0, "runs/x")
    assert "gone_option" not in got
    p = read_saved(PriorConfig, {"workers": -1, "limit": 0, "mlp_hidden": 0, "seed": 0,
                                 "keep_checkpoints": 0, "init": "", "patch_store": ""})
    assert (p["workers"], p["limit"], p["mlp_hidden"], p["init"], p["patch_store"]) == (
        None, None, None, None, None)
    assert (p["seed"], p["keep_checkpoints"]) == (0, 0)  # values, not "unset"


def test_tensorboard_events_when_installed_and_none_otherwise(toy, monkeypatch):
    import model.run as run_mod
    from model.fss.trainer import train_fss

    scalars = []

    class Recorder:
        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", -1))

    monkeypatch.setattr(run_mod, "event_writer", lambda run_dir: Recorder())
    train_fss(_cfg(toy, max_steps=2, out=str(toy["base"] / "tb")))
    assert ("train/loss", 1) in scalars and ("train/loss", 2) in scalars
    assert scalars[-1] == ("closed", -1)
    monkeypatch.undo()
    try:
        import tensorboard  # noqa: F401
    except ImportError:  # the optional extra is absent: the run goes on without events
        assert run_mod.event_writer(toy["base"]) is None
        train_fss(_cfg(toy, max_steps=1, out=str(toy["base"] / "no-tb")))
        assert not list((toy["base"] / "no-tb").glob("events.out.tfevents*"))
    else:
        train_fss(_cfg(toy, max_steps=1, out=str(toy["base"] / "with-tb")))
        assert list((toy["base"] / "with-tb").glob("events.out.tfevents*"))


def test_python_callers_get_the_same_refusals(toy, tmp_path):
    from model.fss.trainer import train_fss

    with pytest.raises(ConfigError, match=r"--lr must be a number > 0, got -1"):
        train_fss(_cfg(toy, lr=-1.0, out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match=r"--bins 'a,b'"):
        train_fss(_cfg(toy, bins="a,b", out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
