"""Few-shot training that survives what a hostile user does (issue 15, issue 13 section 6):
images that became unreadable after ``qgnet-prep masks``, a killed run's leftovers, a resume,
options that are wrong, and DDP refusals that every rank must raise."""
import json
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def toy(make_fss_toy):
    return make_fss_toy("fssrel", n_episodes=4)


def _cfg(toy, **kw):
    from model.fss.config import FssConfig

    common = dict(dataset="folder", fold=0, shot=1, use_prior_map=False, crop=33, batch_size=2,
                  epochs=2, workers=0, threads=1, val_episodes=0, log_every=1, progress=False,
                  cache_dir=toy["cache"], device="cpu")
    return FssConfig(**{**common, **kw})


def _rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_unreadable_images_are_skipped_deterministically_and_counted(make_fss_toy, monkeypatch):
    """Issue 15 item 1 (loader half): every third training image truncated to 3,000 bytes
    after masks and episodes; training runs, skips with a warning, counts the skips."""
    from model.fss.data import MAX_SUBSTITUTES, TrainEpisodes
    from model.fss.trainer import train_fss
    from pipeline.episode_stage import load_training_list

    toy = make_fss_toy("fsscorrupt", n_episodes=4)
    images = sorted((Path(toy["root"]) / "images").glob("train*.png"))
    for p in images[::3]:
        p.write_bytes(p.read_bytes()[:3000])
    tl = load_training_list("folder", 0, cache_dir=toy["cache"])
    ds = TrainEpisodes(tl, shot=1, crop=33, scale=(0.9, 1.1), dataset="folder",
                       cache_dir=toy["cache"])
    with pytest.warns(UserWarning, match="skipping training episode"):
        items = [ds[(i, 1000 + i)] for i in range(len(ds))]
    skipped = [int(it["skipped"]) for it in items]
    assert sum(skipped) > 0 and 0 in skipped and max(skipped) <= MAX_SUBSTITUTES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = [ds[(i, 1000 + i)] for i in range(len(ds))]
    for a, b in zip(items, again, strict=True):  # deterministic: same item, same episode
        assert all(torch.equal(a[k], b[k]) for k in a)

    run = toy["base"] / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_fss(_cfg(toy, max_steps=10, out=str(run)))
    rows = [r for r in _rows(run) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[-1]["skipped_images"] > 0
    totals = [r["skipped_images"] for r in rows]
    assert totals == sorted(totals)  # a running total
    assert torch.load(run / "last.pt", weights_only=True)["skipped_images"] == \
        rows[-1]["skipped_images"]
    # killed at step 5, after the step-3 checkpoint and before the step-5 log line, then
    # resumed: the same total (the skips of steps 1-3 are neither lost nor counted twice)
    from model.fss import build

    real_step, calls = build.step, []

    def dies_at_step_5(*args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    part = toy["base"] / "part"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(build, "step", dies_at_step_5)
        with pytest.raises(KeyboardInterrupt):
            train_fss(_cfg(toy, max_steps=10, log_every=5, ckpt_every=3, out=str(part)))
        monkeypatch.setattr(build, "step", real_step)
        assert torch.load(part / "last.pt", weights_only=True)["step"] == 3
        train_fss(_cfg(toy, max_steps=10, log_every=5, ckpt_every=3, out=str(part),
                       resume=str(part)))
    assert _rows(part)[-1]["skipped_images"] == rows[-1]["skipped_images"]


def test_resume_truncates_metrics_and_removes_stale_temporaries(toy):
    """Issue 15 item 7: a killed run logged steps past its checkpoint and left a temporary."""
    import subprocess
    import sys

    from model.fss.trainer import train_fss

    run = toy["base"] / "killed"
    train_fss(_cfg(toy, max_steps=2, out=str(run)))
    with (run / "metrics.jsonl").open("a") as fh:  # logged after the checkpoint, then killed
        for s in (3, 4):
            fh.write(json.dumps({"kind": "train", "step": s, "loss": 9.0}) + "\n")
        fh.write('{"kind": "tra')
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = run / f"last.pt.tmp{p.pid}"
    stale.write_bytes(b"\0" * 1000)
    train_fss(_cfg(toy, max_steps=4, out=str(run), resume=str(run)))
    steps = [r["step"] for r in _rows(run) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert all(r["loss"] != 9.0 for r in _rows(run))
    assert not stale.exists()
    assert not list(run.glob("*.tmp*"))


def test_resume_refuses_options_that_change_the_run(toy):
    """Issue 15 item 2: a fold-0 run resumed with another fold and crop is refused."""
    from model.fss.trainer import train_fss

    run = toy["base"] / "fold0"
    train_fss(_cfg(toy, max_steps=1, out=str(run)))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"cannot resume.*fold: checkpoint 0, now 1.*crop"):
        train_fss(_cfg(toy, max_steps=2, fold=1, crop=97, out=str(run), resume=str(run)))
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("change, message", [
    (dict(shot=0), r"^--shot \(support images per episode\) must be an int >= 1, got 0$"),
    (dict(crop=8), r"^--crop \(crop side in pixels\) must be an int >= 9, got 8; the folder "
                   r"default is 161$"),
    (dict(batch_size=-1), r"^--batch-size \(global batch\) must be an int >= 1, got -1"),
    (dict(threads=-2), r"^--threads must be an int >= 1, got -2$"),
    (dict(fold=7), r"^--fold 7: the dataset folder has folds 0-3"),
    (dict(dataset="../x"), r"--dataset must be a name made of letters"),
])
def test_bad_options_name_one_option_and_leave_no_run_dir(toy, change, message):
    """Issue 15 item 11: one option named with its range; nothing created on failure."""
    from model.fss.trainer import train_fss

    out = toy["base"] / "never"
    with pytest.raises(ConfigError, match=message) as err:
        train_fss(_cfg(toy, out=str(out), **change))
    assert "bad options" not in str(err.value)
    assert not out.exists()


def test_missing_episodes_leave_no_run_dir(tmp_path):
    from model.fss.config import FssConfig
    from model.fss.trainer import train_fss

    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="qgnet-prep episodes"):
        train_fss(FssConfig(dataset="folder", use_prior_map=False, cache_dir=str(tmp_path),
                            device="cpu", out=str(out)))
    assert not out.exists()


# ---------------------------------------------------------------------------- DDP refusals
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, cfg, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from model.fss.trainer import train_fss

    try:
        train_fss(cfg)
        out = "ok"
    except Exception as exc:  # noqa: BLE001 - the test inspects what each rank raised
        out = f"{type(exc).__name__}: {exc}"
    with open(os.path.join(results, f"rank{rank}.txt"), "w") as fh:
        fh.write(out)
    torch.distributed.destroy_process_group()


def _two_ranks(cfg, tmp_path) -> list[str]:
    import time

    import torch.multiprocessing as mp

    ctx = mp.spawn(_rank_main, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:  # a rank waits in a collective the other left
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung: " + ", ".join(
                (tmp_path / f"rank{r}.txt").read_text() if (tmp_path / f"rank{r}.txt").exists()
                else f"rank {r}: no result" for r in range(2)))
    return [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]


@pytest.mark.ddp
def test_ddp_refusals_are_raised_on_every_rank(toy, tmp_path):
    """Issue 13 section 6: an occupied run dir and a global batch that does not divide by the
    world size are refused by every rank (none waits in a collective)."""
    out = toy["base"] / "occupied"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    res = _two_ranks(_cfg(toy, out=str(out)), tmp_path)
    assert all(r.startswith("FileExistsError") and "already holds a run" in r for r in res), res
    res = _two_ranks(_cfg(toy, batch_size=3, out=str(toy["base"] / "odd")), tmp_path)
    assert all(r.startswith("ConfigError") and "--batch-size 3" in r and "2 processes" in r
               for r in res), res
    assert not (toy["base"] / "odd").exists()


# ---------------------------------------------------------------------------- issue 22 §4
def test_a_copied_cache_says_which_images_it_reads_and_refuses_a_vanished_root(
        make_fss_toy, tmp_path, capsys):
    """A copied cache silently read images from the root recorded in its mask store, and a
    vanished root failed at the first image without naming the store or --root."""
    import shutil

    from model.fss.data import TestEpisodes
    from model.fss.trainer import train_fss
    from pipeline.episode_stage import load_test_episodes
    from pipeline.errors import DatasetError

    toy = make_fss_toy("copied", n_episodes=4)
    copy = str(tmp_path / "cache-copy")
    shutil.copytree(toy["cache"], copy)
    eps = load_test_episodes("folder", 0, 1, cache_dir=copy)
    ds = TestEpisodes(eps, crop=33, dataset="folder", cache_dir=copy)
    err = capsys.readouterr().err
    assert ds.root == toy["root"]
    assert f"images: {toy['root']} (the dataset root recorded in {copy}/folder/masks/val.zarr" in err
    TestEpisodes(eps, crop=33, dataset="folder", cache_dir=copy)
    assert "images:" not in capsys.readouterr().err  # said once per process
    moved = toy["root"] + "-moved"
    shutil.move(toy["root"], moved)
    try:
        with pytest.raises(DatasetError, match=(
                rf"mask store {copy}/folder/masks/val.zarr was made from the images in "
                rf"{toy['root']}, which no longer exists .*pass --root DIR")):
            TestEpisodes(eps, crop=33, dataset="folder", cache_dir=copy)
        run = tmp_path / "run"
        with pytest.raises(DatasetError, match="--root DIR"):  # before anything is written
            train_fss(_cfg({**toy, "cache": copy}, max_steps=1, out=str(run)))
        assert not run.exists()
        ds = TestEpisodes(eps, crop=33, dataset="folder", cache_dir=copy, root=moved)
        image, label = ds.load(int(eps["query"][0]), int(eps["cls"][0]))  # the fix works
        assert image.shape[:2] == label.shape == (80, 80)
    finally:
        shutil.move(moved, toy["root"])


def test_a_damaged_mask_chunk_read_by_a_loader_worker_is_one_line_naming_it(make_fss_toy):
    """fss errors named no file; from a DataLoader worker they also carried its traceback."""
    from cli._errors import is_user_error, message
    from model.fss.evaluate import test_loader
    from pipeline.episode_stage import load_test_episodes
    from pipeline.errors import StoreError

    toy = make_fss_toy("damaged", n_episodes=4)
    eps = load_test_episodes("folder", 0, 1, cache_dir=toy["cache"])
    chunk = Path(toy["cache"]) / "folder" / "masks" / "val.zarr" / "masks" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[10:40] = b"x" * 30
    chunk.write_bytes(bytes(data))
    loader = test_loader(eps, dataset="folder", crop=33, cache_dir=toy["cache"], workers=2)
    with pytest.raises(StoreError) as err:
        next(iter(loader))
    line = message(err.value)
    assert is_user_error(err.value) and "\n" not in line and "Traceback" not in line, line
    assert line.startswith(f"{chunk}: cannot be read (RuntimeError: Zstd") and "rebuild it:" in line


def test_disk_full_during_a_training_checkpoint_keeps_the_previous_one(toy, file_size_limit):
    """Issue 22 §4: a full disk during the fss checkpoint save was a traceback (torch's
    "unexpected pos"); now one line, no temporary, the step-1 last.pt byte-identical."""
    from cli._errors import is_user_error, message
    from model.fss.trainer import train_fss

    run = toy["base"] / "diskfull"
    train_fss(_cfg(toy, max_steps=1, ckpt_every=1, out=str(run)))
    before = (run / "last.pt").read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(OSError) as err:
        train_fss(_cfg(toy, max_steps=2, ckpt_every=1, out=str(run), resume=str(run)))
    assert is_user_error(err.value)
    assert message(err.value) == f"{run / 'last.pt'}: File too large; the previous file is unchanged"
    assert (run / "last.pt").read_bytes() == before
    assert not list(run.glob("*.tmp*"))
