"""No host-device syncs in a training step that does not log (issue 13 §3).

A sync is counted on CPU as a call of ``aten._local_scalar_dense`` (what ``.item()``,
``int()``, ``float()`` and ``bool()`` of a tensor call; on CUDA each one waits for the
device), ``aten.equal`` (a python bool), or of an op whose *output size depends on the
data* (:data:`DATA_DEPENDENT`: ``bincount``, ``nonzero``, ``masked_select``, ``unique*``,
``histc``, ``repeat_interleave`` without ``output_size``, indexing with a boolean mask): on
CUDA such an op reads a count or a maximum back to the host before it can allocate its
output, a sync the CPU cannot show (``torch.bincount`` learns its length from
``input.max()`` on CUDA, even with ``minlength``). Calls made by the data loader (``torch/utils/data`` or ``model/*/data.py`` /
``augment.py`` on the stack) are left out: on a GPU run they happen in worker processes
on CPU tensors. Every test compares two runs that differ only in the number of
non-logging steps, so the syncs of setup, logging, checkpoints and export cancel out.
"""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _load_prior_tests():
    """tests/model/prior/test_trainer.py (its tiny dataset and backbone), loaded by path
    (pytest runs with --import-mode=importlib, so test modules are not importable)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "prior" / "test_trainer.py"
    spec = importlib.util.spec_from_file_location("_qgnet_prior_tests", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PT = _load_prior_tests()

SYNC_OPS = ("aten._local_scalar_dense", "aten.equal")
#: ops whose output size lives on the device: forbidden in a training step (issue 20 §3)
DATA_DEPENDENT = ("aten.bincount", "aten.nonzero", "aten.argwhere", "aten.masked_select",
                  "aten.unique", "aten._unique", "aten.unique_consecutive", "aten.unique_dim",
                  "aten.histc", "aten.histogram")
LOADER_FILES = ("torch/utils/data", "model/prior/data.py", "model/prior/augment.py",
                "model/fss/data.py", "model/fss/transforms.py")


def _forbidden(name: str, args, kwargs) -> bool:
    """A sync or an op of data-dependent output size (see the module docstring)."""
    if any(name == s or name.startswith(s + ".") or name.startswith(s + "2")
           for s in SYNC_OPS + DATA_DEPENDENT):
        return True
    if name == "aten.repeat_interleave":  # a repeats tensor: size known only with output_size
        return (kwargs or {}).get("output_size") is None
    return _bool_index(name, args)


def _bool_index(name: str, args) -> bool:
    """Indexing with a boolean mask (``x[mask]``, ``x[mask] = v``): a nonzero inside."""
    if name not in ("aten.index", "aten.index_put", "aten.index_put_", "aten._unsafe_index"):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in (args[1] if len(args) > 1 else ()) or ())


class SyncCounter(TorchDispatchMode):
    """Count the ops of :data:`SYNC_OPS` and :data:`DATA_DEPENDENT` (and boolean-mask
    indexing) dispatched while active, outside the loader."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.where: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if _forbidden(name, args, kwargs):
            stack = traceback.extract_stack()[:-1]
            if not any(any(f in fr.filename.replace("\\", "/") for f in LOADER_FILES)
                       for fr in stack):
                self.count += 1
                here = [fr for fr in stack if "/torch/" not in fr.filename]
                self.where.append(f"{name} at {here[-1].filename}:{here[-1].lineno}"
                                  if here else name)
        return func(*args, **(kwargs or {}))


def count_syncs(fn) -> SyncCounter:
    with SyncCounter() as c:
        fn()
    return c


def extra(long: SyncCounter, short: SyncCounter) -> dict[str, int]:
    """Where the longer run synced more often than the shorter one (op at file:line -> count)."""
    from collections import Counter

    return dict(Counter(long.where) - Counter(short.where))


# ------------------------------------------------------------------------------ parts
def test_counter_sees_item_int_float_and_mask_indexing():
    x = torch.arange(6.0)
    c = count_syncs(lambda: (x.sum().item(), int(x.max()), float(x[0]), x[x > 2]))
    assert c.count == 4, c.where
    assert count_syncs(lambda: (x * 2).sum()).count == 0


def test_counter_sees_data_dependent_output_sizes():
    x = torch.tensor([0, 2, 2, 5])
    for fn in (lambda: torch.bincount(x, minlength=8), lambda: torch.unique(x),
               lambda: x.nonzero(), lambda: torch.histc(x.float(), bins=4),
               lambda: torch.repeat_interleave(x, x), lambda: torch.equal(x, x)):
        c = count_syncs(fn)
        assert c.count >= 1, c.where
    # the same counts without one: a fixed-length buffer and scatter_add_
    ok = count_syncs(lambda: torch.zeros(8, dtype=torch.long).scatter_add_(0, x, torch.ones_like(x)))
    assert ok.count == 0, ok.where
    assert count_syncs(lambda: torch.repeat_interleave(x, x, output_size=9)).count == 0


def test_patch_sampling_masks_and_pooling_do_not_sync():
    from model.prior.patches import patch_masks, pool_with_masks, sample_patch_ids

    g = torch.Generator().manual_seed(0)
    maps = torch.randint(1, 9, (3, 32, 32), generator=g)

    def run():
        ids, valid = sample_patch_ids(maps, maps.flip(-1), 4, min_pixels=8, max_id=8)
        pool_with_masks(torch.randn(3, 5, 4, 4), patch_masks(maps, ids, valid, (4, 4)))

    c = count_syncs(run)
    assert c.count == 0, c.where


def test_patch_window_slot_filling_and_crops_do_not_sync():
    """The patch rule (area window, repeat filling) and the crop reading's boxes and crops
    (issue 18 §3, §4)."""
    from model.prior.patch_crops import crop_patches, patch_boxes
    from model.prior.patch_rule import fill_slots
    from model.prior.patches import sample_patch_ids

    g = torch.Generator().manual_seed(0)
    maps = torch.randint(1, 9, (3, 32, 32), generator=g)
    images = torch.randn(3, 3, 32, 32, generator=g)

    def run():
        ids, valid = sample_patch_ids(maps, maps.flip(-1), 4, min_pixels=8, max_pixels=200,
                                      max_id=8)
        source, valid = fill_slots(valid)
        ids = ids.gather(1, source)
        crop_patches(images, patch_boxes(maps, ids, valid), 12)

    c = count_syncs(run)
    assert c.count == 0, c.where


def test_queue_enqueue_does_not_sync():
    from model.prior.queue import RingQueue

    q = RingQueue(4, 10)
    keys, valid = torch.randn(6, 4), torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    c = count_syncs(lambda: (q.enqueue(keys), q.enqueue(keys, valid=valid)))
    assert c.count == 0, c.where


# ------------------------------------------------------------------------------ trainers
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("prior_syncs")
    ids = PT.make_folder_dataset(base / "data", base / "slic-train.zarr")
    return {"root": base / "data", "store": base / "slic-train.zarr", "ids": ids, "base": base}


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    monkeypatch.setitem(PT.BACKBONES, "tiny", PT.TinyBackbone)


def _prior_syncs(tiny, tmp_path, steps: int, **kw) -> SyncCounter:
    from model.prior.trainer import train_prior

    cfg = PT.tiny_config(tiny, tmp_path / f"run{steps}", epochs=4, max_steps=steps, log_every=1000,
                      ckpt_every=None, loss="both", **kw)
    return count_syncs(lambda: train_prior(cfg))


@pytest.mark.parametrize("kw", [{}, dict(local_patches="crop", patches_per_image=2, patch_size=32,
                                          patch_fill="repeat")], ids=["pooled", "crop"])
def test_prior_trainer_non_logging_steps_do_not_sync(tiny, tmp_path, kw):
    # 48 images, batch 8: 6 steps per epoch; both runs stop inside epoch 0 and log once.
    short, long = _prior_syncs(tiny, tmp_path, 2, **kw), _prior_syncs(tiny, tmp_path, 5, **kw)
    assert long.count - short.count == 0, extra(long, short)


@pytest.fixture(scope="module")
def fss_toy(make_fss_toy):
    return make_fss_toy("fss_syncs", n_episodes=2)


def _fss_syncs(toy, steps: int) -> SyncCounter:
    from model.fss.config import FssConfig
    from model.fss.trainer import train_fss

    cfg = FssConfig(dataset="folder", fold=0, shot=1, use_prior_map=True, prior="imagenet",
                    crop=33, batch_size=1, epochs=50, workers=0, threads=1, val_episodes=0,
                    log_every=1000, progress=False, cache_dir=toy["cache"], device="cpu",
                    max_steps=steps, out=str(toy["base"] / f"run{steps}"))
    return count_syncs(lambda: train_fss(cfg))


def test_fss_trainer_non_logging_steps_do_not_sync(fss_toy):
    short, long = _fss_syncs(fss_toy, 2), _fss_syncs(fss_toy, 4)
    assert long.count - short.count == 0, extra(long, short)


# ------------------------------------------------------------------------------ same results
def test_sampling_with_host_max_id_is_identical_to_reading_it():
    from model.prior.patches import sample_patch_ids

    g = torch.Generator().manual_seed(1)
    mq = torch.randint(0, 12, (4, 24, 24), generator=g)
    mk = torch.randint(0, 12, (4, 24, 24), generator=g)
    top = int(max(mq.max(), mk.max()))
    a = sample_patch_ids(mq, mk, 5, min_pixels=30, generator=torch.Generator().manual_seed(7))
    b = sample_patch_ids(mq, mk, 5, min_pixels=30, generator=torch.Generator().manual_seed(7),
                         max_id=top)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # ids above the given bound (or negative) are never sampled
    ids, valid = sample_patch_ids(mq, mk, 12, min_pixels=1, max_id=5)
    assert int(ids[valid].max()) <= 5 and int(ids[valid].min()) >= 1


def test_count_ids_equals_bincount():
    from model.prior.patches import count_ids

    g = torch.Generator().manual_seed(2)
    for n, m, side in ((1, 1, 5), (3, 7, 16), (4, 300, 33)):
        maps = torch.randint(0, m, (n, side, side), generator=g)
        want = torch.stack([torch.bincount(x.flatten(), minlength=m) for x in maps])
        got = count_ids(maps, m)
        assert got.shape == (n, m) and torch.equal(got.long(), want)


def _old_enqueue(keys_buf, ptr, keys):
    """The row-by-row definition: write each key at ptr, advance ptr mod size."""
    keys_buf = keys_buf.clone()
    for row in keys:
        keys_buf[ptr] = row
        ptr = (ptr + 1) % keys_buf.shape[0]
    return keys_buf, ptr


@pytest.mark.parametrize("size,n,start", [(10, 6, 0), (10, 6, 7), (10, 10, 3), (5, 12, 2),
                                          (16, 16, 15)])
def test_masked_enqueue_equals_enqueue_of_the_valid_rows(size, n, start):
    from model.prior.queue import RingQueue

    g = torch.Generator().manual_seed(size * n + start)
    for trial in range(4):
        q = RingQueue(3, size)
        q.ptr[0] = start
        before = q.keys.clone()
        keys = torch.randn(n, 3, generator=g)
        valid = torch.rand(n, generator=g) < (0.5 if trial else 1.1)  # trial 0: all valid
        q.enqueue(keys, valid=valid)
        want, ptr = _old_enqueue(before, start, keys[valid])
        assert torch.equal(q.keys, want) and int(q.ptr) == ptr
        q2 = RingQueue(3, size)
        q2.ptr[0] = start
        q2.keys.copy_(before)
        q2.enqueue(keys)  # unmasked
        want, ptr = _old_enqueue(before, start, keys)
        assert torch.equal(q2.keys, want) and int(q2.ptr) == ptr


def test_weighted_pairwise_cosine_equals_indexing():
    from model.prior.moco import mean_pairwise_cosine

    z = torch.randn(10, 6, generator=torch.Generator().manual_seed(3))
    for mask in ([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], [0] * 9 + [1], [0] * 10, [1] * 10):
        w = torch.tensor(mask, dtype=torch.bool)
        got = mean_pairwise_cosine(z, weights=w)
        assert torch.allclose(got, mean_pairwise_cosine(z[w]), atol=1e-6), mask


GATHER_SCRIPT = r'''
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from model.utils import all_gather_variable

def run(rank, path):
    dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=2)
    x = torch.arange(6.0).view(3, 2) + 10 * rank
    eq = all_gather_variable(x, sizes_equal=True)
    assert torch.equal(eq, torch.cat([torch.arange(6.0).view(3, 2), torch.arange(6.0).view(3, 2) + 10]))
    assert torch.equal(all_gather_variable(x), eq)  # equal sizes found on the host
    y = torch.full((rank + 1, 2), float(rank))  # 1 row on rank 0, 2 rows on rank 1
    var = all_gather_variable(y)
    assert torch.equal(var, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])), var
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(run, args=(sys.argv[1],), nprocs=2)
    print("ok")
'''


@pytest.mark.ddp
@pytest.mark.slow
def test_all_gather_variable_two_ranks(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT.replace("{repo!r}", repr(repo)))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_patch_sampling_does_not_sync_on_cuda():
    """On the device itself: torch.bincount syncs (the mode sees it), count_ids and the
    sampling with a host max_id do not, and give the CPU's counts."""
    from model.prior.patches import count_ids, sample_patch_ids

    g = torch.Generator().manual_seed(4)
    maps = torch.randint(0, 50, (6, 64, 64), generator=g)
    dev = maps.cuda()
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.bincount(dev.flatten())
        counts = count_ids(dev, 50)
        ids, valid = sample_patch_ids(dev, dev.flip(-1), 8, min_pixels=20, max_id=49)
    finally:
        torch.cuda.set_sync_debug_mode(old)
    want = torch.stack([torch.bincount(m.flatten(), minlength=50) for m in maps])
    assert torch.equal(counts.cpu().long(), want)
    assert ids.is_cuda and valid.is_cuda
