"""Typed settings: every command's options as a frozen dataclass, resolved one way.

Configuration flows one way (STYLE.md, lesson 6)::

    dataclass defaults  <  TOML config file  <  environment (QGNET_*)  <  command line

:func:`resolve_config` fills the dataclass, converting and range-checking every value
whatever its source; the resolved config is written next to every output as a plain dict
(:func:`config_dict`). Modules take explicit keyword arguments, never the config object.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import ConfigError
from pipeline.fileio import plain

ENV_PREFIX = "QGNET_"


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
    return plain(dataclasses.asdict(cfg))
