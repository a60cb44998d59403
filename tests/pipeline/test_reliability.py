"""Issue 15, prep side: a corrupt image, a second writer, a killed parent, a huge image.

Each test reproduces one failure of the issue (it failed before the fix) with the toy
dataset of test_stages.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline.mask_stage import build_mask_store
from pipeline.store import MAX_MAP_SIDE, ShardedStore, StoreError, StoreLock, lock_path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # --import-mode=importlib: the toy dataset of test_stages.py
from test_stages import ToyDataset, toy_image  # noqa: E402


def _script(body: str) -> str:
    return textwrap.dedent(f"""
        import os, sys, time
        sys.path[:0] = [{str(HERE)!r}, {os.getcwd()!r}]
    """) + textwrap.dedent(body)


def _wait_for(cond, timeout=60.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------- item 1
def test_half_written_chunks_of_a_killed_writer_are_removed_on_resume(tmp_path):
    """bench/fault_inject.py found a ``<key>.<uuid>.partial`` chunk (zarr writes then renames)
    left by a writer killed mid-write: the resumed store was identical but for that file."""
    ds = ToyDataset(tmp_path / "data", n=4)
    out = tmp_path / "m.zarr"
    build_mask_store(ds, split="train", out=out, shard_size=2, progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    stray = out / "done" / "c" / "0.b5df53ebb5104cb7a9301b3615a19d98.partial"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a chunk")
    build_mask_store(ds, split="train", out=out, shard_size=2, progress=False)  # resume
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert not stray.exists() and after == before


def test_mask_stage_records_an_image_that_does_not_decode(tmp_path):
    """A truncated JPEG whose header reads used to pass `masks` (and then kill fss training)."""
    ds = ToyDataset(tmp_path / "data", n=6, corrupt=(1, 4))
    assert ds.image_size("img001") == (64, 48)  # the header still reads
    store, report = build_mask_store(ds, split="train", out=tmp_path / "m.zarr", shard_size=2,
                                     progress=False)
    assert [f["id"] for f in store.failures] == ["img001", "img004"]
    assert all("ImageReadError" in f["reason"] for f in store.failures)
    assert tuple(store.hw[1]) == (0, 0) and store.extra("class_pixels")[1].sum() == 0
    assert report.failures == 2 and store.complete


def test_episode_builder_never_lists_an_undecodable_image(tmp_path):
    from pipeline.episodes import training_list

    ds = ToyDataset(tmp_path / "data", n=8, corrupt=(3,))
    store, _ = build_mask_store(ds, split="train", out=tmp_path / "m.zarr", shard_size=4,
                                progress=False)
    listed = set(training_list(store.extra("class_pixels"), [1, 2, 3],
                               min_pixels=1)["image_index"].tolist())
    assert listed == {0, 1, 2, 4, 5, 6, 7}


# ---------------------------------------------------------------------------- item 4
def test_store_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    store = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", _script(f"""
        from pipeline.store import StoreLock
        with StoreLock({str(store)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=rf"in use by pid {holder.pid} on host"):
            with StoreLock(store):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the kill left the lock file (with the dead pid); the kernel released the flock
    assert lock_path(store).read_text().split()[0] == str(holder.pid)
    said = []
    with StoreLock(store, echo=said.append) as lock:
        assert lock_path(store).read_text().split()[0] == str(os.getpid())
    assert lock.took_over.startswith(f"pid {holder.pid}")
    assert said and f"stale lock of pid {holder.pid}" in said[0]
    assert not lock_path(store).exists()  # released: removed


def test_two_stage_processes_on_one_store(tmp_path):
    """The second `masks` on a store in use is refused at once; nothing is redone."""
    ds = ToyDataset(tmp_path / "data", n=8)
    out = tmp_path / "m.zarr"
    body = f"""
        import test_stages as t
        from pipeline import mask_stage
        real = mask_stage.mask_map
        def slow(ds, image_id):
            time.sleep(0.3)
            return real(ds, image_id)
        mask_stage.mask_map = slow
        ds = t.ToyDataset({str(ds.root)!r}, n=8)
        mask_stage.build_mask_store(ds, split="train", out={str(out)!r}, shard_size=2,
                                    workers=1, scheduler="sync", progress=False)
        print("done", flush=True)
    """
    first = subprocess.Popen([sys.executable, "-c", _script(body)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: lock_path(out).exists() and lock_path(out).read_text(), what="lock")
    second = subprocess.run([sys.executable, "-c", _script(body)], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode != 0
    assert f"in use by pid {first.pid}" in second.stderr
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0 and "done" in out1, err1
    store = ShardedStore.open(out)
    assert store.complete and not store.failures


# ---------------------------------------------------------------------------- item 3
def test_process_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of a `--scheduler processes` run used to leave its workers alive (PPID 1)."""
    ds = ToyDataset(tmp_path / "data", n=12)
    out = tmp_path / "m.zarr"
    parent = subprocess.Popen([sys.executable, "-c", _script(f"""
        import cloudpickle, test_stages as t
        cloudpickle.register_pickle_by_value(t)
        from pipeline import mask_stage
        def slow(ds, image_id):
            import time
            time.sleep(30)
        ds = t.ToyDataset({str(ds.root)!r}, n=12)
        mask_stage.mask_map = slow
        mask_stage.build_mask_store(ds, split="train", out={str(out)!r}, shard_size=2,
                                    workers=2, scheduler="processes", progress=False)
    """)])
    try:
        proc = psutil.Process(parent.pid)
        # the Manager and two pool workers (plus multiprocessing's resource tracker)
        kids = _wait_for(lambda: [c for c in proc.children(recursive=True)
                                  if "resource_tracker" not in " ".join(c.cmdline())]
                         if len(proc.children(recursive=True)) >= 3 else None,
                         timeout=90, what="worker processes")
        time.sleep(1.0)  # the workers are inside a task now
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs(kids, timeout=10)
        for p in alive:  # do not leave them behind when the test fails
            p.kill()
        assert not alive, [p.pid for p in alive]
    finally:
        if parent.poll() is None:
            parent.kill()


# ---------------------------------------------------------------------------- item 9
def test_an_image_above_the_size_limit_is_refused_and_not_padded(tmp_path):
    ds = ToyDataset(tmp_path / "data", n=4)
    big = np.zeros((16, MAX_MAP_SIDE + 1, 3), np.uint8)
    Image.fromarray(big).save(ds.image_path("img002"))
    store, report = build_mask_store(ds, split="train", out=tmp_path / "m.zarr", shard_size=2,
                                     progress=False)
    assert [f["id"] for f in store.failures] == ["img002"]
    assert "downscale" in store.failures[0]["reason"]
    assert store.map_shape == (64, 64)  # padding follows the images that fit
    assert store.get(0).shape == toy_image(0).shape[:2]


def test_a_second_writer_in_the_same_process_is_refused_too(tmp_path):
    with StoreLock(tmp_path / "s.zarr"):
        with pytest.raises(StoreError, match=rf"in use by pid {os.getpid()}"):
            with StoreLock(tmp_path / "s.zarr"):
                pass
    with StoreLock(tmp_path / "s.zarr"):  # released: free again
        pass
