"""Cache layout, provenance and configuration resolution, in one place.

Configuration flows one way (see STYLE.md, lesson 6)::

    dataclass defaults  <  TOML config file  <  environment (QGNET_*)  <  command line

Every command describes its options as a frozen dataclass; :func:`resolve_config`
fills it and the resolved config is written next to every output as a plain dict.
Modules take explicit keyword arguments, never the config object.

The cache root is ``--cache-dir``, else ``$QGNET_CACHE_DIR``, else ``./cache``. Stores are
keyed by dataset and parameters::

    cache/<dataset>/superpixels/<method>-<split>-<hash>.zarr
    cache/<dataset>/masks/<split>.zarr
    cache/<dataset>/episodes/...
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "QGNET_"


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
    blob = json.dumps(_plain(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def dataset_cache_dir(dataset: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache root>/<dataset>``: everything derived from one dataset lives below it."""
    return cache_root(cache_dir) / dataset


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


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a stored result."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("qgnet", "numpy", "scikit-image", "numba", "zarr", "dask", "fast-slic",
                 "torch", "torchvision", "pycocotools", "pillow", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every store and checkpoint records: parameters, versions, command, time."""
    return {
        "params": _plain(dict(params or {})),
        "versions": package_versions(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------------------
# configuration: defaults < TOML file < environment < command line
# ----------------------------------------------------------------------------------------

def resolve_config(cls, *, cli: Mapping[str, Any] | None = None,
                   config_file: str | os.PathLike | None = None,
                   env: Mapping[str, str] | None = None, section: str | None = None):
    """Fill the frozen dataclass ``cls`` from its defaults, a TOML file, the environment and
    the command line, in that order of increasing priority.

    Parameters
    ----------
    cls : dataclass type
        Every field needs a default.
    cli : mapping
        Command-line values; ``None`` values mean "not given" and do not override.
    config_file : path, optional
        TOML file. Keys may sit at the top level or in a table named ``section``.
    env : mapping, optional
        Defaults to ``os.environ``. ``QGNET_<FIELD>`` (upper case) overrides a field.
    section : str, optional
        TOML table to read (e.g. ``"prior"``); top-level keys are read too.

    Raises
    ------
    ValueError
        An unknown key in the file, or a value that cannot be converted, with the source named.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; pass an existing TOML file "
                                    f"or leave --config out")
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        table = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if section and isinstance(data.get(section), dict):
            table.update(data[section])
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {unknown} for {cls.__name__}; "
                             f"known options: {sorted(fields)}")
        values.update(table)
    env = os.environ if env is None else env
    for name, field in fields.items():
        key = ENV_PREFIX + name.upper()
        if key in env and name not in {"cache_dir"}:
            values[name] = _convert(env[key], field, source=f"${key}")
        elif key in env and name == "cache_dir":
            values[name] = env[key]
    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ValueError(f"unknown option {name!r} for {cls.__name__}")
        values[name] = value
    return cls(**values)


def config_dict(cfg) -> dict[str, Any]:
    """A resolved config as a plain, JSON-serialisable dict."""
    return _plain(dataclasses.asdict(cfg))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_plain(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _convert(text: str, field: dataclasses.Field, *, source: str) -> Any:
    default = field.default if field.default is not dataclasses.MISSING else None
    typ = type(default) if default is not None else str
    try:
        if typ is bool:
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if typ in (tuple, list):
            return typ(type(default[0])(t) if default else t for t in text.split(",") if t)
        return typ(text)
    except ValueError:
        raise ValueError(f"{source}={text!r} is not a valid {typ.__name__} for option "
                         f"{field.name!r}") from None


def _plain(obj: Any) -> Any:
    """Convert paths, tuples and numpy scalars to JSON-friendly values."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj
