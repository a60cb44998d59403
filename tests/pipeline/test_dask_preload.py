"""The worker preload for dask.distributed clusters (issue 14): glibc's malloc thresholds
are set (the nanny's MALLOC_TRIM_THRESHOLD_ froze the mmap threshold at 128 KiB), kernels
load, both idempotent, and a worker started with ``--preload`` gets them at start-up."""

import sys

import pytest

from pipeline import dask_preload


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tune_malloc_applies_once():
    assert dask_preload.tune_malloc() is True
    assert dask_preload.tune_malloc() is True  # idempotent


def test_prepare_loads_the_kernels():
    pytest.importorskip("numba")
    assert dask_preload.prepare() is True
    assert dask_preload._done
    from pipeline.superpixels import _numba_fh

    assert _numba_fh.fh_merge.signatures  # compiled (or loaded from cache) in this process


def test_preload_hook_runs_on_a_worker():
    """``dask worker --preload pipeline.dask_preload`` calls dask_setup(worker); an
    in-process worker shares this process, so the flag it sets is visible here."""
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("numba")
    dask_preload._done = False  # as in a fresh worker process
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None,
                                  preload=["pipeline.dask_preload"]) as cluster, \
            distributed.Client(cluster) as client:
        assert client.run(lambda: __import__("pipeline.dask_preload").dask_preload._done)
