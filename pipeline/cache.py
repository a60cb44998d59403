"""The cache layout, in one place: where every store and episode file of a dataset lives.

The cache root is ``--cache-dir``, else ``$QGNET_CACHE_DIR``, else ``./cache``. Stores are
keyed by dataset and parameters::

    cache/<dataset>/superpixels/<method>-<split>-<hash>.zarr
    cache/<dataset>/masks/<split>.zarr
    cache/<dataset>/episodes/...
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import ConfigError
from pipeline.fileio import plain

#: A dataset name keys its cache folder ``<cache root>/<name>/``: letters, digits, ``-``,
#: ``_`` and ``.``, starting with a letter or digit (so never ``..``, ``/x`` or ``a/b``).
DATASET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def validate_dataset_name(name: Any, *, option: str = "--dataset") -> str:
    """Return ``name`` if it can key a cache folder, else raise :class:`ConfigError`.

    The one check every command runs (prep, train, eval) before it builds a path from a
    dataset name: a name such as ``../../x`` or ``/abs/path`` would otherwise write outside
    the cache. Data that lives elsewhere is given with ``--root DIR``, never in the name.

    >>> validate_dataset_name("camvid")
    'camvid'
    """
    if not isinstance(name, str) or not DATASET_NAME_RE.fullmatch(name):
        raise ConfigError(f"{option} must be a name made of letters, digits, '-', '_' and '.' "
                          f"(starting with a letter or digit), got {name!r}; for data in "
                          f"another folder keep a plain name and pass --root DIR")
    return name



def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache root: ``cache_dir``, else ``$QGNET_CACHE_DIR``, else ``./cache``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("QGNET_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("cache")


def params_hash(params: Mapping[str, Any], *, length: int = 10) -> str:
    """Stable short hash of a parameter dict (key order does not matter).

    >>> params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1})
    True
    """
    blob = json.dumps(plain(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def dataset_cache_dir(dataset: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache root>/<dataset>``: everything derived from one dataset lives below it
    (the name is checked by :func:`validate_dataset_name`, so the path stays inside)."""
    return cache_root(cache_dir) / validate_dataset_name(dataset)


def superpixel_store_path(dataset: str, method: str, split: str, params: Mapping[str, Any], *,
                          cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the superpixel store for these parameters (the backend is not part of the key
    unless it is in ``params``)."""
    return dataset_cache_dir(dataset, cache_dir=cache_dir) / "superpixels" / (
        f"{method}-{split}-{params_hash(params)}.zarr")


def mask_store_path(dataset: str, split: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the decoded class-mask store of one split."""
    return dataset_cache_dir(dataset, cache_dir=cache_dir) / "masks" / f"{split}.zarr"


def episodes_dir(dataset: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding fold splits, training lists and fixed test episodes."""
    return dataset_cache_dir(dataset, cache_dir=cache_dir) / "episodes"

