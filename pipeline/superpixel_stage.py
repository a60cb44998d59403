"""Offline stage: superpixel maps of every image of a split into one sharded Zarr store.

    dataset.load_image(id)  ->  segment(image, method=..., backend=..., **params)  ->  labels
    (H x W x 3 uint8)           (pipeline.superpixels)                            (H x W uint16,
                                                                                   1..n)

The store (kind ``"superpixels"``, see docs/contracts.md) holds ``labels`` (padded, 0 =
padding), ``n_segments`` (N,) int32 and the group attributes ``dataset``, ``split``,
``method``, ``backend``, ``params``, ``root`` plus provenance.

**The store key.** ``params`` = the method's parameters (slic: ``n_segments``,
``compactness``, ``max_iter``; felzenszwalb: ``scale``, ``sigma``, ``min_size``), the
**concrete** backend and ``limit`` (``None`` = the whole split). The backend is part of the
key because backends give different labels; ``"auto"`` is resolved first (slic: fast-slic,
else numba, else skimage; felzenszwalb: numba, else skimage), so ``--backend auto`` and
``--backend fast-slic`` name the same store on a machine with fast-slic, and a machine
without fast-slic builds (and looks for) a different one. The path is
``superpixel_store_path(dataset, method, split, params)``; ``num_threads`` is not part of
the key (it does not change the labels).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.cache import superpixel_store_path
from pipeline.errors import ConfigError
from pipeline.provenance import provenance
from pipeline.runner import RunReport, build_store, dataset_source
from pipeline.settings import format_command, option
from pipeline.store import ShardedStore, StoreError
from pipeline.superpixels import resolve_backend  # the one backend table and resolver

METHODS = ("slic", "felzenszwalb")
METHOD_PARAMS = {"slic": ("n_segments", "compactness", "max_iter"),
                 "felzenszwalb": ("scale", "sigma", "min_size")}
FLAGS = {"n_segments": "--n-segments", "compactness": "--compactness", "max_iter": "--max-iter",
         "scale": "--scale", "sigma": "--sigma", "min_size": "--min-size"}
_TYPES = {"n_segments": int, "max_iter": int, "min_size": int, "compactness": float,
          "scale": float, "sigma": float}
_MINIMUM = {"n_segments": (1, "an integer >= 1"), "max_iter": (1, "an integer >= 1"),
            "min_size": (0, "an integer >= 0"), "sigma": (0.0, "a number >= 0")}
_POSITIVE = {"compactness", "scale"}


@dataclasses.dataclass(frozen=True)
class SuperpixelConfig:
    """Options of ``qgnet-prep superpixels``; ``None`` = the method's default from
    ``pipeline.superpixels.DEFAULTS`` (method parameters) or "not set" (limit, out, root)."""

    dataset: str = "demo"
    root: str | None = None
    split: str = "train"
    method: str = "slic"
    n_segments: int | None = None
    compactness: float | None = None
    max_iter: int | None = None
    scale: float | None = None
    sigma: float | None = None
    min_size: int | None = None
    backend: str = "auto"
    workers: int = option(2, min=1)
    scheduler: str = "threads"
    limit: int | None = option(None, min=1)
    cache_dir: str | None = None
    out: str | None = None
    overwrite: bool = False
    max_failures: int = option(0, min=0)
    shard_size: int | None = option(None, min=1)
    progress: bool = True
    year: int | None = option(None, min=2014, max=2017)  # COCO only: 2014 or 2017
    train_json: str | None = None    # a COCO-style json per split (pipeline.datasets.spec)
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None


# ------------------------------------------------------------------------------ parameters
def _kernels():
    """``pipeline.superpixels`` (``segment``, ``DEFAULTS``); one seam for the stage's tests."""
    import pipeline.superpixels as sp

    return sp


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown superpixel method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def method_defaults(method: str) -> dict[str, Any]:
    defaults = _kernels().DEFAULTS[check_method(method)]
    return {k: defaults[k] for k in METHOD_PARAMS[method] if k in defaults}


def superpixel_params(method: str, params: Mapping[str, Any] | None = None, *,
                      backend: str = "auto", limit: int | None = None) -> dict[str, Any]:
    """The store key: the method's full parameters (defaults filled in, validated), the
    concrete backend and ``limit``.

    >>> superpixel_params("slic", {"n_segments": 50}, backend="skimage")  # doctest: +SKIP
    {'n_segments': 50, 'compactness': 10.0, 'max_iter': 10, 'backend': 'skimage', 'limit': None}
    """
    check_method(method)
    given = {k: v for k, v in dict(params or {}).items() if v is not None}
    given.pop("backend", None)
    given.pop("num_threads", None)
    other = sorted(set(given) - set(METHOD_PARAMS[method]))
    if other:
        flags = ", ".join(FLAGS.get(k, k) for k in other)
        raise ConfigError(f"{flags} do(es) not apply to {method}; its parameters are "
                          f"{', '.join(FLAGS[k] for k in METHOD_PARAMS[method])}")
    out: dict[str, Any] = {}
    for name, value in {**method_defaults(method), **given}.items():
        try:
            value = _TYPES[name](value)
            if _TYPES[name] is int and float(given.get(name, value)) != value:
                raise ValueError
        except (TypeError, ValueError):
            word = "an int" if _TYPES[name] is int else "a number"
            raise ConfigError(f"{FLAGS[name]} must be {word}, got {given.get(name)!r}") from None
        if name in _MINIMUM and value < _MINIMUM[name][0]:
            raise ConfigError(f"{FLAGS[name]} must be {_MINIMUM[name][1]}, got {value}")
        if name in _POSITIVE and not value > 0:
            raise ConfigError(f"{FLAGS[name]} must be > 0, got {value}")
        out[name] = value
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    out["backend"] = resolve_backend(method, backend)
    out["limit"] = None if limit is None else int(limit)
    return out


def build_command(dataset: str, split: str, method: str, params: Mapping[str, Any] | None = None,
                  ) -> str:
    """The ``qgnet-prep superpixels`` command that builds the store of ``params``."""
    opts: dict[str, Any] = {"dataset": dataset, "split": split, "method": method}
    if params:
        defaults = method_defaults(method)
        for name in METHOD_PARAMS[method]:
            if name in params and params[name] != defaults.get(name):
                opts[name] = params[name]
        if params.get("backend") not in (None, "auto", resolve_backend(method, "auto")):
            opts["backend"] = params["backend"]
        opts["limit"] = params.get("limit")
    return format_command("qgnet-prep", "superpixels", **opts)


# ------------------------------------------------------------------------------ per image
def superpixel_map(dataset, image_id: str, *, method: str, params: Mapping[str, Any],
                   backend: str) -> tuple[np.ndarray, dict[str, int]]:
    """Labels (H x W uint16, 1..n) and ``{"n_segments": n}`` of one image."""
    sp = _kernels()
    kwargs = {k: params[k] for k in METHOD_PARAMS[method]}
    if backend == "fast-slic":
        kwargs["num_threads"] = 1  # inside a parallel task (fast-slic uses all cores otherwise)
    labels = np.asarray(sp.segment(dataset.load_image(image_id), method=method, backend=backend,
                                   **kwargs))
    n = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 1:
        raise ValueError(f"segment() returned label {int(labels.min())}; labels must be 1..n")
    if n > np.iinfo(np.uint16).max:
        raise ValueError(f"{n} segments do not fit uint16")
    return labels.astype(np.uint16, copy=False), {"n_segments": n}


# ------------------------------------------------------------------------------ the stage
def build_superpixel_store(dataset, *, split: str = "train", method: str = "slic",
                           params: Mapping[str, Any] | None = None, backend: str = "auto",
                           out: str | Path | None = None, cache_dir: str | Path | None = None,
                           workers: int = 2, scheduler: str = "threads",
                           limit: int | None = None, overwrite: bool = False,
                           shard_size: int | None = None, progress: bool = True,
                           root: str | Path | None = None, year: int | None = None
                           ) -> tuple[ShardedStore, RunReport]:
    """Build (or resume) the superpixel store of one split (``year``: COCO's release).

    Parameters
    ----------
    dataset : Dataset or str
        A reader, or a registry name opened with ``open_dataset(name, root, cache_dir=)``
        only when there is work to do.
    method : ``"slic"`` or ``"felzenszwalb"``
    params : mapping, optional
        Method parameters; missing ones come from ``pipeline.superpixels.DEFAULTS[method]``.
    backend : ``"auto"``, ``"fast-slic"``, ``"numba"`` or ``"skimage"``
        Resolved to a concrete backend, which is part of the store key (module docstring).
    out : path, optional
        Explicit store path instead of ``superpixel_store_path(...)``.
    workers, scheduler : see :mod:`pipeline.runner`.
    limit : int, optional
        Only the first ``limit`` images of the split (part of the key).
    overwrite : bool
        Delete an existing store and start over; otherwise an incomplete store is resumed
        and a complete one returned at once.

    Returns
    -------
    (store, report) : the opened store and a :class:`~pipeline.runner.RunReport`.

    Raises
    ------
    ValueError : bad method, parameter, backend, scheduler or limit.
    StoreError : a store made with other settings exists at the path.
    """
    key = superpixel_params(method, params, backend=backend, limit=limit)
    name, ds, data_root = dataset_source(dataset, root, cache_dir, year=year)
    path = Path(out) if out else superpixel_store_path(name, method, split, key,
                                                       cache_dir=cache_dir)
    check = {"kind": "superpixels", "dataset": name, "split": split, "method": method,
             "backend": key["backend"], "params": key}
    fn = functools.partial(superpixel_map, method=method, params=key, backend=key["backend"])
    return build_store(
        ds, split=split, limit=key["limit"], path=path, kind="superpixels", maps="labels",
        dtype="uint16", extras=lambda d: {"n_segments": ((), "int32")},
        attrs=lambda d: provenance(key), check=check, fn=fn,
        hint=build_command(name, split, method, key), workers=workers, scheduler=scheduler,
        overwrite=overwrite, shard_size=shard_size, progress=progress,
        desc=f"{method} {name}/{split}", root=data_root)


def locate_superpixel_store(dataset: str, split: str, method: str, *,
                            cache_dir: str | Path | None = None,
                            params: Mapping[str, Any] | None = None) -> ShardedStore:
    """The complete superpixel store of ``dataset``/``split``/``method``, open for reading
    (its path is ``.path``).

    With ``params`` (method parameters, optionally ``backend`` and ``limit``) the store of
    exactly that key. Without, the store of the defaults (``DEFAULTS[method]``, backend
    ``auto``); if that one does not exist, the single complete store of this method and split
    under ``<cache>/<dataset>/superpixels/`` (several: an error listing them).

    Raises :class:`StoreError` naming the command that builds (or resumes) the store.
    """
    check_method(method)
    p = dict(params or {})
    key = superpixel_params(method, p, backend=p.pop("backend", None) or "auto",
                            limit=p.pop("limit", None))
    path = superpixel_store_path(dataset, method, split, key, cache_dir=cache_dir)
    command = build_command(dataset, split, method, key)
    if cache_dir:
        command += f" --cache-dir {cache_dir}"
    if path.exists():
        return _complete_or_raise(path, command)
    if params is None:
        folder = path.parent
        found = sorted(folder.glob(f"{method}-{split}-*.zarr")) if folder.is_dir() else []
        complete = [f for f in found if _is_complete(f)]
        if len(complete) == 1:
            return _complete_or_raise(complete[0], command)
        if len(complete) > 1:
            listing = "\n".join(f"  {f}  {_describe(f)}" for f in complete)
            raise StoreError(f"several complete {method} stores for {dataset}/{split}:\n{listing}\n"
                             f"choose one with --patch-store PATH")
        if found:
            raise StoreError(f"the {method} store {found[0]} for {dataset}/{split} is incomplete; "
                             f"re-run the command that made it to resume (its command: "
                             f"{_attrs(found[0]).get('command') or command})")
    raise StoreError(f"no {method} superpixel store for {dataset}/{split} at {path}; "
                     f"create it with: {command}")


def _attrs(path: Path) -> dict:
    try:
        return dict(ShardedStore.open(path).attrs)
    except Exception:  # noqa: BLE001
        return {}


def _is_complete(path: Path) -> bool:
    try:
        return ShardedStore.open(path).complete
    except Exception:  # noqa: BLE001 - half-created or foreign folder
        return False


def _describe(path: Path) -> str:
    return str(_attrs(path).get("params"))


def _complete_or_raise(path: Path, command: str) -> ShardedStore:
    return ShardedStore.open_complete(path, "superpixels", command, what="superpixel store")
