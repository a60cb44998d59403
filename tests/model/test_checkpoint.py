"""model/checkpoint.py: atomic saves, the one loader and its errors, rotation, leftovers of
killed runs, per-device RNG state, the metrics window and the resume rule."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from model import checkpoint as C
from pipeline.errors import CheckpointError, ConfigError


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class Opaque:  # a class a weights_only load refuses
    def __init__(self):
        self.x = 1


def test_save_is_atomic_and_round_trips(tmp_path):
    path = C.save_checkpoint(tmp_path / "a" / "last.pt", {"step": 3, "w": torch.arange(4)},
                             kind="fss")
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left
    got = torch.load(path, weights_only=True)
    assert got["step"] == 3 and got["kind"] == "fss" and torch.equal(got["w"], torch.arange(4))
    assert got["checkpoint_version"] == C.CHECKPOINT_VERSION


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = C.save_checkpoint(tmp_path / "last.pt", {"step": 1})
    with pytest.raises(Exception):  # noqa: B017 - torch.save of an unpicklable object
        C.save_checkpoint(path, {"step": 2, "bad": lambda: 0})
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("what", ["pickled", "random", "truncated", "empty", "tensor", "json"])
def test_unreadable_files_are_one_checkpoint_error_naming_the_file(tmp_path, what):
    path = tmp_path / f"{what}.pt"
    good = C.save_checkpoint(tmp_path / "good.pt", {"model": {}, "step": 0})
    if what == "pickled":
        torch.save({"model": Opaque()}, path)
    elif what == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif what == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError) as err:
        C.load_checkpoint(path, kind="fss")
    msg = str(err.value)
    assert str(path) in msg and "qgnet-train fss" in msg and "\n" not in msg


def test_plain_pickle_is_refused_too(tmp_path):
    path = tmp_path / "p.pt"
    path.write_bytes(pickle.dumps({"model": Opaque()}))
    with pytest.raises(CheckpointError, match="p.pt"):
        C.load_checkpoint(path)


def test_wrong_kind_is_named(tmp_path):
    prior = C.save_checkpoint(tmp_path / "step-0000001.pt",
                              {"model": {}, "optimizer": {}, "scheduler": {}, "step": 1,
                               "config": {}}, kind="prior")
    with pytest.raises(CheckpointError, match="is a prior checkpoint.*qgnet-train fss"):
        C.load_checkpoint(prior, kind="fss")
    old = tmp_path / "old.pt"  # written before checkpoints carried their kind
    torch.save({"model": {}, "step": 1, "config": {}}, old)
    with pytest.raises(CheckpointError, match="no 'model_meta'"):
        C.load_checkpoint(old, kind="fss")
    with pytest.raises(CheckpointError, match="prior_extractor.pt"):
        C.load_checkpoint(prior, kind="prior_export")
    assert C.load_checkpoint(prior, kind="prior")["step"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        C.load_checkpoint(tmp_path / "missing.pt", kind="fss")


def test_saver_keeps_the_newest_and_find_picks_complete_files(tmp_path):
    saver = C.CheckpointSaver(tmp_path / "checkpoints", kind="prior", keep=2)
    for step in (1, 2, 3, 10):
        saver.save_step({"step": step}, step)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000003.pt", "step-0000010.pt"]
    (tmp_path / "checkpoints" / "step-0000011.pt.tmp999999").write_bytes(b"half")
    assert C.find_checkpoint(tmp_path, kind="prior").name == "step-0000010.pt"
    saver.save_named({"step": 10}, "last")
    assert C.find_checkpoint(tmp_path / "checkpoints", kind="fss").name == "last.pt"
    with pytest.raises(FileNotFoundError, match="last.pt"):
        C.find_checkpoint(tmp_path, kind="fss")


def test_metrics_are_truncated_to_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s} for s in (1, 2, 3, 4)] + [{"kind": "val", "step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tr')  # cut line
    assert C.truncate_metrics(path, 2) == 4
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2]
    assert C.truncate_metrics(path, 2) == 0 and C.truncate_metrics(tmp_path / "none", 1) == 0


def test_rng_state_round_trips_python_numpy_torch():
    import random

    C.seed_everything(5)
    state = C.rng_state("cpu")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    C.set_rng_state(state, "cpu")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert "cuda" not in state  # a CPU run stores no CUDA state


def test_cuda_rng_state_is_this_ranks_device_only(monkeypatch):
    """Issue 13 section 5: a run saved on 4 GPUs resumes where one is visible (and the other
    way round): each rank saves and restores only its own device's state."""
    calls = {"get": [], "set": []}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: calls["get"].append(d) or
                        torch.full((4,), d.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("all devices"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("all devices"))

    def set_one(state, device):
        if device.index >= 1:  # one GPU visible now
            raise IndexError("device index out of range")
        calls["set"].append((int(state[0]), device.index))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    saved = C.rng_state(torch.device("cuda", 3))  # rank 3 of a 4-GPU run
    assert calls["get"] == [torch.device("cuda", 3)] and int(saved["cuda"][0]) == 3
    C.set_rng_state(saved, torch.device("cuda", 0))  # resumed on the one visible GPU
    assert calls["set"] == [(3, 0)]
    # an older checkpoint holding get_rng_state_all()'s list of 4 states
    old = {**saved, "cuda": [torch.full((4,), k, dtype=torch.uint8) for k in range(4)]}
    C.set_rng_state(old, torch.device("cuda", 0))
    assert calls["set"][-1] == (0, 0)
    C.set_rng_state(old, "cpu")  # resumed on CPU: the CUDA state is not needed
    assert len(calls["set"]) == 2
    with pytest.warns(UserWarning, match="rank 2 starts from rank 0"):
        assert C.pick_rank_state(["a", "b"], 2) == "a"


def test_window_means_and_sums():
    w = C.WindowMeans(sums=("skipped",))
    for loss, skipped in ((1.0, 0), (2.0, 1), (6.0, 2)):
        w.add(loss=loss, skipped=skipped)
    assert len(w) == 3
    assert w.pop() == {"loss": 3.0, "skipped": 3.0}
    assert len(w) == 0 and w.pop() == {}
    w.add(loss=1.0, skipped=1)
    assert w.pop(reduce=lambda keys, vals: [v * 2 for v in vals]) == {"loss": 2.0, "skipped": 2.0}


def test_the_resume_rule():
    from model.fss.config import RESUMABLE, FssConfig
    from pipeline.settings import resolve_config

    saved = {**FssConfig(fold=0, crop=161, max_steps=10).__dict__}
    with pytest.raises(ConfigError) as err:
        resolve_config(FssConfig, cli={"fold": 1, "crop": 97, "resume": "r"}, env={},
                       base=saved, resumable=RESUMABLE)
    msg = str(err.value)
    assert msg.startswith("cannot resume") and "fold: checkpoint 0, now 1" in msg
    assert "crop: checkpoint 161, now 97" in msg and "--out" in msg
    cfg = resolve_config(FssConfig, cli={"fold": 0, "workers": 0, "device": "cpu", "threads": 1,
                                         "resume": "r", "seed": None}, env={},
                         base={**saved, "max_steps": None}, resumable=RESUMABLE)
    assert (cfg.fold, cfg.crop, cfg.workers, cfg.threads, cfg.max_steps) == (0, 161, 0, 1, None)
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_config(FssConfig, cli={"nope": 1}, env={}, base=saved, resumable=RESUMABLE)



def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, file_size_limit):
    """A write refused by the OS (here EFBIG from a file size limit, as ENOSPC from a full
    disk) used to surface as torch's ``RuntimeError: unexpected pos``: a traceback."""
    import errno

    from cli._errors import is_user_error, message

    path = C.save_checkpoint(tmp_path / "last.pt", {"step": 1, "w": torch.zeros(10)}, kind="fss")
    before = path.read_bytes()
    with file_size_limit(200_000), pytest.raises(OSError) as err:
        C.save_checkpoint(path, {"step": 2, "w": torch.zeros(1_000_000)}, kind="fss")
    assert err.value.errno == errno.EFBIG and err.value.filename == str(path)
    assert is_user_error(err.value)
    assert message(err.value) == f"{path}: File too large; the previous file is unchanged"
    assert path.read_bytes() == before  # the previous checkpoint, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
    with file_size_limit(200_000), pytest.raises(OSError, match="nothing was written"):
        C.save_checkpoint(tmp_path / "new.pt", {"w": torch.zeros(1_000_000)})
    assert not (tmp_path / "new.pt").exists()


def test_a_save_into_a_read_only_folder_is_one_line(read_only_dir):
    from cli._errors import is_user_error, message

    with pytest.raises(OSError) as err:
        C.save_checkpoint(read_only_dir / "last.pt", {"step": 1})
    assert is_user_error(err.value)
    assert message(err.value).startswith(f"{read_only_dir / 'last.pt'}: ")
    assert "nothing was written" in message(err.value)
    assert list(read_only_dir.iterdir()) == []
