"""Fill a :class:`~pipeline.store.ShardedStore` with a per-image function, one Dask task per shard.

The unit of work is the shard, never the image (STYLE.md: zarr 3.1 silently loses data when
several tasks write into one shard)::

    pending shards k  --(one task each)-->  for image in shard k:  size check, fn(dataset, id)
                                            store.write_shard(k, maps, extras, failures)

A per-image function has the signature ``fn(dataset, image_id) -> (map, extras)`` where
``map`` is the ``H x W`` 2-D array of the image (its size must equal
``dataset.image_size(image_id)``) and ``extras`` maps every side array of the store to that
image's row. Any ``Exception`` for one image becomes a failure record
``{"id": ..., "reason": "<Type>: <message>"}`` with no map and zero extras; the run goes on.
``KeyboardInterrupt`` / ``SystemExit`` are not caught: the shards already marked done stay
done and re-running the same command computes the rest.

Schedulers (``scheduler=``):

* ``"threads"`` (default): Dask's threaded scheduler with ``workers`` threads. The numba
  kernels release the GIL, so this scales; per-image progress via a shared counter.
* ``"processes"``: Dask's multiprocessing scheduler (spawned processes; the dataset object is
  pickled to them). Per-image progress through a ``multiprocessing.Manager`` queue.
* ``"sync"``: one thread, in order (debugging).
* ``"tcp://HOST:PORT"`` (any ``dask.distributed`` address): one future per shard on the
  cluster; ``workers`` is ignored (the cluster has its own). The store path must be on a
  filesystem every worker sees. Progress is **per shard** (``as_completed`` over the shard
  futures, advancing the bar by the shard's image count), not per image.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.errors import ConfigError
from pipeline.store import (
    MAX_MAP_SIDE,
    ShardedStore,
    StoreError,
    StoreLock,
    auto_shard_size,
    remove_partial_writes,
)

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
SIZE_CHUNK = 1024          # image ids per size-reading task
SIZE_PARALLEL_FROM = 4096  # read sizes serially below this many images


def check_scheduler(scheduler: str, workers: int) -> str:
    """Validate ``--scheduler`` / ``--workers``; returns the scheduler name."""
    if workers < 1:
        raise ConfigError(f"--workers must be an int >= 1, got {workers}")
    if scheduler in LOCAL_SCHEDULERS or is_address(scheduler):
        return scheduler
    raise ConfigError(f"unknown scheduler {scheduler!r}: use threads, processes, sync or a "
                      f"dask.distributed address such as tcp://127.0.0.1:8786")


def is_address(scheduler: str) -> bool:
    return "://" in scheduler


SCHEDULER_PROBE_S = 5.0  # how long a scheduler address may take to accept a connection


def probe_scheduler(address: str, *, timeout: float = SCHEDULER_PROBE_S) -> None:
    """Refuse, quickly and before anything is written, a scheduler address where no dask
    scheduler answers.

    ``distributed.Client`` retries a refused connection for 30 s and then raises a bare
    ``OSError`` traceback: one TCP connection attempt tells "connection refused" at once
    (an unreachable host after ``timeout`` s; ``tcp://`` and ``tls://`` only). Something
    else listening there is found by one client handshake (:func:`connect`).
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme in ("tcp", "tls"):
        try:
            host, port = parts.hostname, parts.port
        except ValueError:  # a port that is not a number
            host = port = None
        if not host or port is None:
            raise ConfigError(f"--scheduler {address}: expected a dask scheduler address such "
                              f"as tcp://127.0.0.1:8786")
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise _no_scheduler(address, reason) from None
    connect(address).close()


def _no_scheduler(address: str, reason: str) -> ConfigError:
    return ConfigError(f"--scheduler {address}: no dask scheduler answers at that address "
                       f"({reason}); start one (`dask scheduler`, then `dask worker {address}`) "
                       f"or use --scheduler threads")


def connect(address: str):
    """``distributed.Client(address)``; a failed handshake (nothing that speaks dask's
    protocol there: a timeout, or garbage read as a message length) is a
    :class:`ConfigError` saying so, not distributed's traceback."""
    from distributed import Client

    try:
        return Client(address)
    except Exception as exc:  # noqa: BLE001 - the connect phase only; any failure means "not a scheduler"
        text = (str(exc).strip().splitlines() or [""])[0][:120]
        raise _no_scheduler(address, f"{type(exc).__name__}: {text}") from None


# ------------------------------------------------------------------------------ report
@dataclass
class RunReport:
    """What one run of a stage did (printed at the end, returned by the stage functions)."""

    path: str
    images: int = 0              # images in the store
    computed: int = 0            # images computed by this run
    shards_run: int = 0
    failures: int = 0            # failure records in the store (all runs)
    new_failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0         # whole call: opening the dataset, sizes, layout, compute, write
    compute_seconds: float = 0.0  # the shard tasks only (what images_per_s divides by)
    bytes_on_disk: int = 0
    scheduler: str = "threads"
    workers: int = 1
    already_complete: bool = False

    @property
    def images_per_s(self) -> float:
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    @property
    def bytes_per_image(self) -> float:
        ok = self.images - self.failures
        return self.bytes_on_disk / ok if ok > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2),
                "bytes_per_image": round(self.bytes_per_image, 1)}

    def lines(self) -> list[str]:
        if self.already_complete:
            head = f"store is complete, nothing to do: {self.path}"
        else:
            head = (f"computed {self.computed} images in {self.shards_run} shards in "
                    f"{self.compute_seconds:.1f} s ({self.images_per_s:.1f} images/s, "
                    f"{self.workers} worker(s), scheduler {self.scheduler}); "
                    f"{self.seconds:.1f} s in all")
        return [head,
                f"store: {self.path}",
                f"images: {self.images}, failures: {self.failures}, "
                f"size on disk: {self.bytes_on_disk / 1e6:.1f} MB "
                f"({self.bytes_per_image:.0f} bytes per image)"]


# ------------------------------------------------------------------------------ the task
def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def compute_shard(path: str, k: int, fn: Callable, dataset, notify: Callable | None = None
                  ) -> tuple[int, int, list[dict[str, str]]]:
    """The one Dask task of shard ``k``: compute every image of the shard, then write it.

    Returns ``(k, images, failures)``. ``notify(1)`` is called after each image (progress).
    """
    store = ShardedStore.open(path, mode="r+")
    start, stop = store.shard_range(k)
    specs = {name: store.extra_spec(name) for name in store.attrs.get("extras", [])}
    rows = {name: np.zeros((stop - start,) + shape, dtype) for name, (shape, dtype) in specs.items()}
    maps: list[np.ndarray | None] = []
    failures: list[dict[str, str]] = []
    limit_hw = tuple(int(v) for v in store.map_shape)
    for j, image_id in enumerate(store.ids[start:stop]):
        m, reason = None, None
        try:
            hw = tuple(int(v) for v in dataset.image_size(image_id))
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the run
            reason = "image size could not be read: " + _reason(e)
        if reason is None and (hw[0] > limit_hw[0] or hw[1] > limit_hw[1]):
            reason = (f"image is {hw[0]} x {hw[1]} px, larger than this store's maps "
                      f"({limit_hw[0]} x {limit_hw[1]}; at most {MAX_MAP_SIDE} px a side, "
                      f"pipeline.store.MAX_MAP_SIDE): downscale it, then re-run with --overwrite")
        if reason is None:
            try:
                m, extras = fn(dataset, image_id)
                m = np.asarray(m)
                if m.shape != hw:
                    raise ValueError(f"map has shape {m.shape} but the image header says {hw}")
                for name in specs:
                    rows[name][j] = extras[name]
            except Exception as e:  # noqa: BLE001
                reason = _reason(e)
        if reason is not None:
            m = None
            for name in specs:
                rows[name][j] = 0
            failures.append({"id": image_id, "reason": reason})
        maps.append(m)
        if notify is not None:
            notify(1)
    store.write_shard(k, maps, extras=rows, failures=failures)
    return k, stop - start, failures


class _QueueTick:
    """Picklable progress callback for spawned processes: puts counts on a Manager queue."""

    def __init__(self, queue):
        self.queue = queue

    def __call__(self, n: int) -> None:
        self.queue.put(n)


# ------------------------------------------------------------------------------ scheduling
def plan_shards(pending: Sequence[int]) -> dict[str, int]:
    """Task key -> shard index, exactly one task per pending shard.

    Raises if a shard is listed twice: two writers of one shard lose data silently.
    """
    keys = {f"qgnet-shard-{int(k):06d}": int(k) for k in pending}
    if len(keys) != len(pending):
        raise RuntimeError(f"shard listed twice in {list(pending)}; one writer per shard")
    return keys


def run_shards(store: ShardedStore, fn: Callable, dataset, *, scheduler: str = "threads",
               workers: int = 2, progress: bool = True, desc: str = "images",
               shards: Sequence[int] | None = None) -> tuple[int, int, list[dict[str, str]]]:
    """Compute and write the pending shards of ``store`` (or just ``shards``).

    Returns ``(shards run, images computed, new failure records)``.
    """
    check_scheduler(scheduler, workers)
    pending = store.pending_shards() if shards is None else [int(k) for k in shards]
    plan = plan_shards(pending)
    total = sum(store.shard_range(k)[1] - store.shard_range(k)[0] for k in pending)
    if not plan:
        return 0, 0, []
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, smoothing=0.1,
               dynamic_ncols=True)
    try:
        if is_address(scheduler):
            results = _run_distributed(store, fn, dataset, plan, scheduler, bar)
        elif scheduler == "processes":
            results = _run_processes(store, fn, dataset, plan, workers, bar)
        else:
            from pipeline.dask_preload import tune_malloc

            tune_malloc()  # image-sized arrays reuse freed memory instead of fresh pages
            lock = threading.Lock()

            def tick(n: int) -> None:
                with lock:
                    bar.update(n)

            results = _run_local(store, fn, dataset, plan, scheduler, workers, tick)
    finally:
        bar.close()
    new_failures = [f for _, _, fs in sorted(results) for f in fs]
    return len(results), sum(r[1] for r in results), new_failures


def _graph(store, fn, dataset, plan, notify):
    import dask

    task = dask.delayed(compute_shard, pure=False)
    return [task(str(store.path), k, fn, dataset, notify, dask_key_name=key)
            for key, k in plan.items()]


def _run_local(store, fn, dataset, plan, scheduler, workers, notify):
    import dask

    return list(dask.compute(*_graph(store, fn, dataset, plan, notify),
                             scheduler=scheduler, num_workers=workers))


def die_with_parent(parent_pid: int, *, poll_s: float = 0.5) -> None:
    """Process initializer: end this process when ``parent_pid`` dies, even by ``kill -9``.

    Without it, Dask's process-pool workers (and the progress ``Manager``) of a killed
    ``qgnet-prep`` live on with PPID 1, writing shards that a resumed run also writes. Two
    mechanisms: Linux's ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (immediate), and a daemon thread
    that polls ``os.getppid()`` (every platform; also covers a parent that died before the
    prctl call).
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="qgnet-die-with-parent", daemon=True).start()


def _run_processes(store, fn, dataset, plan, workers, bar):
    import multiprocessing
    from multiprocessing.managers import SyncManager

    import dask
    from dask.multiprocessing import get_context

    guard = functools.partial(die_with_parent, os.getpid())
    manager = SyncManager(ctx=multiprocessing.get_context(get_context().get_start_method()))
    manager.start(guard)
    with manager:
        queue = manager.Queue()
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    bar.update(queue.get(timeout=0.2))
                except Exception:  # noqa: BLE001 - queue.Empty, or the manager went away
                    continue

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            return list(dask.compute(*_graph(store, fn, dataset, plan, _QueueTick(queue)),
                                     scheduler="processes", num_workers=workers,
                                     initializer=guard))
        finally:
            stop.set()
            reader.join()
            while not queue.empty():
                bar.update(queue.get())


def _run_distributed(store, fn, dataset, plan, address, bar):
    from distributed import as_completed

    with connect(address) as client:
        # every worker: malloc settings and kernels loaded once, before any shard (what
        # ``dask worker --preload pipeline.dask_preload`` does at start-up; idempotent)
        from pipeline.dask_preload import prepare

        client.run(prepare)
        futures = {client.submit(compute_shard, str(store.path), k, fn, dataset, None,
                                 key=key, pure=False): k for key, k in plan.items()}
        results = []
        for fut in as_completed(futures):  # progress per shard on a cluster
            k, n, fails = fut.result()
            bar.update(n)
            results.append((k, n, fails))
        return results


# ------------------------------------------------------------------------------ sizes
def _sizes_of(dataset, ids: Sequence[str]) -> list[tuple[int, int]]:
    out = []
    for image_id in ids:
        try:
            h, w = dataset.image_size(image_id)
            out.append((int(h), int(w)))
        except Exception:  # noqa: BLE001 - recorded as a failure by the shard task
            out.append((0, 0))
    return out


def read_sizes(dataset, ids: Sequence[str], *, scheduler: str = "threads", workers: int = 2
               ) -> np.ndarray:
    """``(N, 2)`` int32 ``(H, W)`` of every image; ``(0, 0)`` where the size can't be read
    (the shard task records the reason). Parallel with the same scheduler for many images."""
    ids = list(ids)
    if len(ids) < SIZE_PARALLEL_FROM or scheduler == "sync":
        return np.asarray(_sizes_of(dataset, ids), dtype=np.int32).reshape(len(ids), 2)
    chunks = [ids[i:i + SIZE_CHUNK] for i in range(0, len(ids), SIZE_CHUNK)]
    if is_address(scheduler):
        with connect(scheduler) as client:
            parts = client.gather(client.map(_sizes_of, [dataset] * len(chunks), chunks,
                                             pure=False))
    else:
        import dask

        guard = ({"initializer": functools.partial(die_with_parent, os.getpid())}
                 if scheduler == "processes" else {})  # no orphans while reading sizes either
        parts = dask.compute(*[dask.delayed(_sizes_of, pure=False)(dataset, c) for c in chunks],
                             scheduler=scheduler, num_workers=workers, **guard)
    return np.asarray([hw for part in parts for hw in part], dtype=np.int32).reshape(len(ids), 2)


# ------------------------------------------------------------------------------ the stage
def dataset_source(dataset, root=None, cache_dir=None, *, year: int | None = None
                   ) -> tuple[str, Any, Path]:
    """``(name, reader or zero-argument opener, absolute root)`` for :func:`build_store`: a
    registry name is not opened here (a complete store needs no reader). ``year``: COCO's
    release (:func:`pipeline.datasets.open_dataset`)."""
    from pipeline.datasets import dataset_root

    if isinstance(dataset, str):
        def opener():
            from pipeline.datasets import open_dataset

            return open_dataset(dataset, root, cache_dir=cache_dir, year=year)

        return dataset, opener, dataset_root(dataset, root, cache_dir=cache_dir)
    return dataset.name, dataset, dataset_root(dataset.name, dataset.root)


def build_store(dataset, *, split: str, limit: int | None, path: Path, kind: str, maps: str,
                dtype, extras: Callable[[Any], dict], attrs: Callable[[Any], dict],
                check: dict[str, Any], fn: Callable, hint: str, workers: int = 2,
                scheduler: str = "threads", overwrite: bool = False,
                shard_size: int | None = None, progress: bool = True, desc: str = "images",
                root: Path | None = None) -> tuple[ShardedStore, RunReport]:
    """The machinery both stages share: open (resume) or create the store, run the shards.

    Parameters
    ----------
    dataset : Dataset or zero-argument callable returning one
        Opened only when there is work to do (a complete store returns at once).
    check : dict
        Group attributes an existing store must have (kind, dataset, split, params...);
        a store made with other settings is refused, naming the difference.
    extras, attrs : callables of the opened dataset
        Side-array specs ``{name: (row shape, dtype)}`` and the group attributes of a new store.
    fn : picklable ``fn(dataset, image_id) -> (map, extras)`` (see :func:`compute_shard`).
    hint : the command that builds this store (quoted in errors).
    shard_size : images per shard of a new store; ``None``: :func:`~pipeline.store.auto_shard_size`.
    root : the absolute dataset root the run reads (:func:`dataset_source`); an existing
        store made from another root is refused (complete or not) without opening the
        dataset. New stores record it as the attribute ``root``.
    """
    check_scheduler(scheduler, workers)
    if is_address(scheduler):
        probe_scheduler(scheduler)  # before the lock and the store layout: nothing written
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be an int >= 1, got {limit}")
    if shard_size is not None and shard_size < 1:
        raise ConfigError(f"--shard-size must be an int >= 1, got {shard_size}")
    path = Path(path)
    with StoreLock(path, echo=_stderr):  # one writing process per store
        remove_partial_writes(path)  # chunks a killed writer left half-written
        return _build_store_locked(
            dataset, split=split, limit=limit, path=path, kind=kind, maps=maps, dtype=dtype,
            extras=extras, attrs=attrs, check=check, fn=fn, hint=hint, workers=workers,
            scheduler=scheduler, overwrite=overwrite, shard_size=shard_size, progress=progress,
            desc=desc, root=root)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _build_store_locked(dataset, *, split, limit, path, kind, maps, dtype, extras, attrs, check,
                        fn, hint, workers, scheduler, overwrite, shard_size, progress, desc,
                        root) -> tuple[ShardedStore, RunReport]:
    t0 = time.perf_counter()
    store = None
    if path.exists() and not overwrite:
        store = ShardedStore.open(path, mode="r+", kind=kind, hint=hint)
        store.check_attrs(check, hint="pass --overwrite to rebuild it with these settings, "
                                      "or --out to write it elsewhere")
        check_root(store, root)
        if store.complete:
            return store, finish_report(store, t0=t0, shards_run=0, computed=0, new_failures=[],
                                        scheduler=scheduler, workers=workers,
                                        already_complete=True)
    ds = dataset() if callable(dataset) and not hasattr(dataset, "ids") else dataset
    ds.check_split(split)
    ids = list(ds.ids(split))
    if limit is not None:
        ids = ids[:limit]
    if store is not None:
        if store.ids != ids:
            raise StoreError(f"{path} was made for other image ids than {ds.name} split {split!r} "
                             f"now lists ({store.n} stored, {len(ids)} now); pass --overwrite to "
                             f"rebuild it")
    else:
        hw = read_sizes(ds, ids, scheduler=scheduler, workers=workers)
        store = ShardedStore.create(path, ids=ids, hw=hw, maps=maps, dtype=dtype,
                                    attrs={**attrs(ds), **check,
                                           "root": os.path.realpath(ds.root)},
                                    extras=extras(ds),
                                    shard_size=(auto_shard_size(len(ids)) if shard_size is None
                                                else shard_size),
                                    overwrite=overwrite)
    t1 = time.perf_counter()
    try:
        shards_run, computed, new_failures = run_shards(
            store, fn, ds, scheduler=scheduler, workers=workers, progress=progress, desc=desc)
    except KeyboardInterrupt:
        done = store.done
        raise KeyboardInterrupt(f"interrupted with {int(done.sum())}/{len(done)} shards of "
                                f"{path} done; re-run the same command to resume") from None
    compute_seconds = time.perf_counter() - t1
    store = ShardedStore.open(path, mode="r+", kind=kind)  # the tasks wrote hw through their own handles
    report = finish_report(store, t0=t0, shards_run=shards_run, computed=computed,
                           new_failures=new_failures, scheduler=scheduler, workers=workers)
    report.compute_seconds = compute_seconds
    return store, report


def check_root(store: ShardedStore, root: Path | None) -> None:
    """Refuse a store whose recorded dataset root is not ``root`` (both made absolute): its
    maps belong to other images even if the ids match (e.g. two folder datasets with the
    same file names under one ``--dataset`` name)."""
    made_from = store.attrs.get("root")
    if root is None or not made_from:
        return
    if os.path.realpath(made_from) != os.path.realpath(root):
        raise StoreError(f"{store.path} was made from the images in {made_from}, not {root}; "
                         f"pass --overwrite to rebuild it from {root}, --out to write another "
                         f"store, or --root {made_from} to use this one")


def finish_report(store: ShardedStore, *, t0: float, shards_run: int, computed: int,
                  new_failures: list[dict[str, str]], scheduler: str, workers: int,
                  already_complete: bool = False) -> RunReport:
    return RunReport(path=str(store.path), images=store.n, computed=computed,
                     shards_run=shards_run, failures=len(store.failures),
                     new_failures=new_failures, seconds=time.perf_counter() - t0,
                     bytes_on_disk=store.nbytes_on_disk(), scheduler=scheduler,
                     workers=workers, already_complete=already_complete)
