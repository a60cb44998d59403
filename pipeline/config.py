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
import re
import shlex
import shutil
import socket
import sys
import time
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import ConfigError

ENV_PREFIX = "QGNET_"

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


def format_command(*words: Any, **options: Any) -> str:
    """One shell-quoted command line, for the hints in messages: ``format_command("qgnet-prep",
    "masks", dataset="my data", limit=None)`` -> ``"qgnet-prep masks --dataset 'my data'"``.

    ``None`` and ``False`` options are left out, ``True`` becomes a bare flag, lists and
    tuples repeat the flag; underscores in option names become dashes.
    """
    parts = [str(w) for w in words]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
            continue
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            parts += [flag, str(v)]
    return " ".join(shlex.quote(p) for p in parts)


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

def option(default: Any = None, *, min: float | None = None, max: float | None = None,
           flag: str | None = None) -> Any:
    """A config dataclass field with bounds that :func:`resolve_config` checks for every
    source: ``shard_size: int | None = option(None, min=1)``."""
    meta = {k: v for k, v in {"min": min, "max": max, "flag": flag}.items() if v is not None}
    return dataclasses.field(default=default, metadata=meta)


def resolve_config(cls, *, cli: Mapping[str, Any] | None = None,
                   config_file: str | os.PathLike | None = None,
                   env: Mapping[str, str] | None = None, section: str | None = None):
    """Fill the frozen dataclass ``cls`` from its defaults, a TOML file, the environment and
    the command line, in that order of increasing priority.

    Every value is converted to (and checked against) the field's annotated type, whatever
    its source: ``QGNET_SHARD_SIZE=64`` gives the int 64, ``workers = "two"`` in a TOML file
    is refused naming the file. ``None`` is "not set" everywhere: an optional field
    (``int | None``) takes ``QGNET_LIMIT=`` (empty) or ``"none"`` as ``None``. A field's
    ``metadata={"min": m}`` (or ``"max"``) bounds its value; ``metadata={"flag": "--x"}``
    names it in messages (default ``--<name-with-dashes>``).

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
    ConfigError
        A missing or invalid TOML file, an unknown key in it, or a value of the wrong type or
        out of range; the message names the source (file, ``$QGNET_X`` or ``--flag``) and
        what is allowed.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file "
                              f"or leave --config out")
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML ({e}); fix it or leave "
                              f"--config out") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a UTF-8 text file; pass a TOML file "
                              f"or leave --config out") from None
        table = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if section and isinstance(data.get(section), dict):
            table.update(data[section])
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {unknown} for {cls.__name__}; "
                              f"known options: {sorted(fields)}")
        for name, value in table.items():
            source = f"{path}: {name}"
            values[name] = convert_value(value, types_[name], source=source)
            sources[name] = source
    env = os.environ if env is None else env
    for name in fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = convert_value(env[key], types_[name], source=f"${key}")
            sources[name] = f"${key}"
    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown option {name!r} for {cls.__name__}")
        flag = fields[name].metadata.get("flag") or "--" + name.replace("_", "-")
        values[name] = convert_value(value, types_[name], source=flag)
        sources[name] = flag
    for name, value in values.items():
        check_range(value, fields[name], source=sources[name])
    return cls(**values)


def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved annotation (``int``, ``int | None``, ``tuple[int, ...]``...)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: infer from defaults
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        typ = hints.get(f.name)
        if typ is None:
            default = f.default if f.default is not dataclasses.MISSING else None
            typ = type(default) if default is not None else str
        if typ in (tuple, list) and isinstance(f.default, (tuple, list)) and f.default:
            typ = tuple[type(f.default[0]), ...]  # bare ``tuple``: the default's element type
        out[f.name] = typ
    return out


_TYPE_WORDS = {int: "an int", float: "a number", bool: "a boolean (true/false)", str: "a string"}


def convert_value(value: Any, typ: Any, *, source: str) -> Any:
    """``value`` (a string from the environment, a TOML value or a click value) as type
    ``typ``; :class:`ConfigError` naming ``source`` when it does not fit.

    >>> convert_value("64", int, source="$QGNET_SHARD_SIZE")
    64
    >>> convert_value("", int | None, source="$QGNET_LIMIT") is None
    True
    """
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
            return None
        typ = inner[0] if len(inner) == 1 else str
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ in (tuple, list) or origin in (tuple, list):
        elem = args[0] if args else None
        items = ([t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str)
                 else list(value) if isinstance(value, (list, tuple)) else [value])
        if elem is None or elem is Ellipsis:
            return tuple(items)
        return tuple(convert_value(v, elem, source=source) for v in items)
    if typ is Any or not isinstance(typ, type):
        return value
    word = _TYPE_WORDS.get(typ, f"a {typ.__name__}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    elif isinstance(value, typ):
        return value
    raise ConfigError(f"{source} must be {word}, got {value!r}")


def check_range(value: Any, field: dataclasses.Field, *, source: str) -> None:
    """Refuse ``value`` outside the field's ``metadata`` ``min`` / ``max`` (``None`` passes)."""
    lo, hi = field.metadata.get("min"), field.metadata.get("max")
    if value is None or (lo is None and hi is None) or isinstance(value, bool):
        return
    if not isinstance(value, (int, float)):
        return
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = (f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}")
        what = "an int" if isinstance(value, int) else "a number"
        raise ConfigError(f"{source} must be {what} {allowed}, got {value!r}")


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


# ----------------------------------------------------------------------------------------
# temporaries of killed processes: <name>.tmp<pid>
# ----------------------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_host() -> str:
    return socket.gethostname()


_TMP_RE = re.compile(r"(?P<base>.+)\.tmp(?P<pid>\d+)")


def remove_stale_temporaries(folder: str | os.PathLike, *, base: str | None = None) -> list[Path]:
    """Delete ``<name>.tmp<pid>`` files and folders in ``folder`` whose process ``pid`` is
    dead (what a killed atomic write leaves: ``demo/data.tmp<pid>``, ``last.pt.tmp<pid>``).

    Only entries named exactly ``<name>.tmp<digits>`` (and, with ``base``, ``<base>.tmp<pid>``)
    are touched; those of live processes (a run in progress) are kept. Returns the removed
    paths. Call it at the start of a command, before it writes its own temporary.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP_RE.fullmatch(entry.name)
        if not m or (base is not None and m["base"] != base):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


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
