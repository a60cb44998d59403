"""``dask worker ... --preload pipeline.dask_preload``: make a worker ready for the stages.

Two things, both idempotent; ``pipeline.runner`` also runs :func:`prepare` on every worker
of a cluster before it submits shards, so a worker started without the preload gets them
too (inside the run instead of at start-up).

1. **malloc.** A worker started by a nanny runs with ``MALLOC_TRIM_THRESHOLD_=65536``
   (distributed's ``nanny.pre-spawn-environ``, meant to hand freed memory back to the OS).
   Setting that variable also freezes glibc's mmap threshold at 128 KiB, so every image-sized
   array (a decoded JPEG, a label map, kernel work arrays) is a fresh mmap whose pages
   fault in again on every image: measured, decode + fast-slic + connectivity cost 1.4x
   the CPU time of the same code in a plain process (docs/benchmarks.md, superpixels,
   "On a dask.distributed cluster").
   :func:`tune_malloc` sets the mmap threshold back to glibc's own dynamic maximum (32 MiB)
   and the trim threshold to 128 MiB: memory a stage frees is reused by the next image
   instead of returned and faulted in again. Linux/glibc only; elsewhere a no-op.
2. **kernels.** Imports zarr (``pipeline.store``) and runs every superpixel kernel once on a
   tiny image, so numba's cached machine code (and fast-slic) is loaded at worker start,
   not inside the first shard task of every worker. (It imports nothing above
   ``pipeline.runner``, which calls it.)
"""
from __future__ import annotations

_done = False
_tuned = None
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 128 * 2**20


def tune_malloc() -> bool:
    """glibc: mmap threshold 32 MiB, trim threshold 128 MiB (see the module docstring).
    Returns True when applied, False where there is no glibc."""
    global _tuned
    if _tuned is None:
        _tuned = False
        try:
            import ctypes
            import sys

            if sys.platform.startswith("linux"):
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
                _tuned = bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
                              and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            _tuned = False
    return _tuned


def prepare() -> bool:
    """:func:`tune_malloc` and :func:`warm`; what a worker runs before its first shard."""
    tune_malloc()
    return warm()


def warm() -> bool:
    """Load every stage kernel in this process once; returns True."""
    global _done
    if _done:
        return True
    import numpy as np

    import pipeline.store  # noqa: F401 - zarr, which every shard task needs
    from pipeline.superpixels import available_backends, felzenszwalb, slic

    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:] = 200
    for backend in available_backends("slic"):
        if backend != "skimage":
            slic(img, n_segments=4, backend=backend, num_threads=1)
    if "numba" in available_backends("felzenszwalb"):
        felzenszwalb(img, scale=100, sigma=0.5, min_size=4, backend="numba")
    _done = True
    return True


def dask_setup(worker=None) -> None:  # called by ``dask worker --preload``
    prepare()
