"""Typed settings: every command's options as a frozen dataclass, resolved one way.

Configuration flows one way (STYLE.md, lessons 6 and 14)::

    dataclass defaults  <  TOML config file  <  environment (QGNET_*)  <  command line
    (a resumed run:  the checkpoint's config  <  TOML  <  environment  <  command line,
     and only resumable options may differ from the checkpoint's)

:func:`resolve_config` fills the dataclass, converting and checking every value whatever its
source; the resolved config is written next to every output as a plain dict
(:func:`config_dict`). ``None`` is the one spelling of "not set": 0, ``""`` and -1 are
values, checked like any other (:func:`option` declares the bounds and choices).
Modules take explicit keyword arguments, never the config object.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import shlex
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

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


# ------------------------------------------------------------------------------ fields
def option(default: Any = None, *, min: float | None = None, max: float | None = None,
           gt: float | None = None, choices: Iterable[Any] | None = None,
           flag: str | None = None, what: str | None = None, help: str | None = None,
           folder: bool = False) -> Any:
    """A config dataclass field with the checks :func:`resolve_config` (every source) and
    :func:`check_config` (a config built in Python) apply: ``crop: int | None = option(None,
    min=9, what="crop side in pixels")``.

    ``min`` / ``max``: inclusive bounds; ``gt``: an exclusive lower bound (``lr``, a
    temperature); ``choices``: the allowed values; ``flag``: the command-line flag when it is
    not ``--<name-with-dashes>`` (``"--prior-map/--no-prior-map"`` for a boolean pair; its
    environment name ``QGNET_PRIOR_MAP`` is read too); ``what``: a few words shown in
    messages; ``help``: the command-line help (``cli/_options.py`` builds the click option
    from the field); ``folder``: the value is a folder path. ``None`` always passes (it means
    "not set").
    """
    meta = {k: v for k, v in {"min": min, "max": max, "gt": gt, "flag": flag, "what": what,
                              "help": help, "folder": folder or None,
                              "choices": tuple(choices) if choices is not None else None
                              }.items() if v is not None}
    return dataclasses.field(default=default, metadata=meta)


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of a config field (``--shard-size``; the first of a pair)."""
    return (field.metadata.get("flag") or "--" + field.name.replace("_", "-")).split("/")[0]


def env_names(cls) -> dict[str, str]:
    """Environment variable -> field of ``cls``: ``QGNET_<FIELD>`` and, when the flag is
    named otherwise, ``QGNET_<FLAG>`` too (``QGNET_PRIOR_MAP`` for ``--prior-map``)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        out[ENV_PREFIX + f.name.upper()] = f.name
        out.setdefault(ENV_PREFIX + flag_of(f).lstrip("-").replace("-", "_").upper(), f.name)
    return out


# ------------------------------------------------------------------------------ resolution
def resolve_config(cls, *, cli: Mapping[str, Any] | None = None,
                   config_file: str | os.PathLike | None = None,
                   env: Mapping[str, str] | None = None, section: str | None = None,
                   base: Mapping[str, Any] | None = None,
                   resumable: Iterable[str] | None = None):
    """Fill the frozen dataclass ``cls`` from its defaults (or ``base``), a TOML file, the
    environment and the command line, in that order of increasing priority.

    Every value is converted to (and checked against) the field's annotated type and its
    :func:`option` bounds and choices, whatever its source: ``QGNET_SHARD_SIZE=64`` gives the
    int 64, ``workers = "two"`` in a TOML file is refused naming the file. ``None`` is "not
    set" everywhere: an optional field (``int | None``) takes ``QGNET_LIMIT=`` (empty) or
    ``"none"`` as ``None`` (an optional string field only the empty string: ``--init none``
    is a value).

    Parameters
    ----------
    cls : dataclass type
        Every field needs a default.
    cli : mapping
        Command-line values; ``None`` values mean "not given" and do not override.
    config_file : path, optional
        TOML file. Keys may sit at the top level or in a table named ``section``.
    env : mapping, optional
        Defaults to ``os.environ``. ``QGNET_<FIELD>`` (and ``QGNET_<FLAG>``, see
        :func:`env_names`) overrides a field.
    section : str, optional
        TOML table to read (e.g. ``"prior"``); top-level keys are read too.
    base : mapping, optional
        A saved config (a checkpoint's) that replaces the defaults; read by
        :func:`read_saved`, so configs written with the old "unset" spellings still load.
    resumable : iterable of str, optional
        With ``base``: the options that may differ from it. Any other option given by the
        file, the environment or the command line must equal ``base``'s value (the resume
        rule, :func:`check_resume`).

    Raises
    ------
    ConfigError
        A missing or invalid TOML file, an unknown key in it, a value of the wrong type, out
        of range or not among the choices, or (resuming) an option that would change the
        run; the message names the source (file, ``$QGNET_X`` or ``--flag``).
    """
    given = given_values(cls, cli=cli, config_file=config_file, env=env, section=section)
    values = {k: v for k, (v, _) in given.items()}
    if base is None:
        return cls(**values)
    saved = read_saved(cls, base)
    if resumable is not None:
        check_resume(saved, values, resumable=resumable,
                     sources={k: s for k, (_, s) in given.items()})
    return cls(**{**saved, **values})


def given_values(cls, *, cli: Mapping[str, Any] | None = None,
                 config_file: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None,
                 section: str | None = None) -> dict[str, tuple[Any, str]]:
    """The values the TOML file, the environment and the command line give (later sources
    win), each converted and checked: field -> ``(value, source)``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = field_types(cls)
    given: dict[str, tuple[Any, str]] = {}

    def put(name: str, raw: Any, source: str) -> None:
        value = convert_value(raw, types_[name], source=source)
        check_value(value, fields[name], source=source)
        given[name] = (value, source)

    for name, (raw, source) in _read_toml(config_file, section, cls.__name__, fields).items():
        put(name, raw, source)
    env = os.environ if env is None else env
    seen: dict[str, str] = {}
    for key, name in env_names(cls).items():
        if key not in env:
            continue
        if name in seen and env[seen[name]] != env[key]:
            raise ConfigError(f"${seen[name]}={env[seen[name]]!r} and ${key}={env[key]!r} set "
                              f"the same option {flag_of(fields[name])}; unset one of them")
        seen[name] = key
        put(name, env[key], f"${key}")
    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown option {name!r} for {cls.__name__}")
        put(name, value, flag_of(fields[name]))
    return given


def _read_toml(config_file, section, what: str, fields) -> dict[str, tuple[Any, str]]:
    if not config_file:
        return {}
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
        raise ConfigError(f"{path}: unknown option(s) {unknown} for {what}; "
                          f"known options: {sorted(fields)}")
    return {name: (value, f"{path}: {name}") for name, value in table.items()}


def read_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` in a saved config (a checkpoint's, a config.json), ready to be
    ``cls(**...)``'s arguments.

    Configs written before "not set" was spelled ``None`` hold ``""``, ``0`` or ``-1`` for
    it: in an optional field, ``""`` and a number outside the field's bounds (``val_every:
    0`` where the option needs >= 1, ``workers: -1`` where it needs >= 0) are read as
    ``None``. Keys that are no longer options are dropped. A config class with an
    ``upgrade_saved(saved) -> saved`` static method (``PriorConfig``: the patch rule of its
    older checkpoints) maps its old files first.
    """
    upgrade = getattr(cls, "upgrade_saved", None)  # a config's own rule for its old files
    if upgrade is not None:
        saved = upgrade(saved)
    types_ = field_types(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in saved:
            continue
        value = saved[f.name]
        if _is_optional(types_[f.name]) and _legacy_unset(value, f):
            value = None
        try:
            value = convert_value(value, types_[f.name], source=f"saved config: {f.name}")
        except ConfigError:
            pass  # kept as saved; the code that reads it decides
        out[f.name] = value
    return out


def _is_optional(typ) -> bool:
    return (typing.get_origin(typ) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(typ))


def _legacy_unset(value: Any, field: dataclasses.Field) -> bool:
    if value == "":
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        check_value(value, field, source="")
    except ConfigError:
        return True
    return False


def merge_unset(values: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every ``None`` (not set) taken from ``base``: the one way a command
    fills what the user left out from a checkpoint's config (``qgnet-eval``)."""
    return {k: (base.get(k) if v is None else v) for k, v in values.items()}


def check_config(cfg, *, hints: Mapping[str, str] | None = None):
    """Check every field of a config built in Python (not through :func:`resolve_config`)
    against its :func:`option` bounds and choices; returns ``cfg``. ``hints``: field ->
    text appended to its message (e.g. the dataset's default)."""
    for f in dataclasses.fields(cfg):
        check_value(getattr(cfg, f.name), f, source=flag_of(f),
                    hint=(hints or {}).get(f.name, ""))
    return cfg


# ------------------------------------------------------------------------------ the resume rule
def changed_options(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                    resumable: Iterable[str],
                    sources: Mapping[str, str] | None = None) -> list[str]:
    """Options of ``now`` that are not resumable and differ from the checkpoint's ``saved``."""
    resumable = frozenset(resumable)
    sources = sources or {}
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}"
            + (f" ({sources[k]})" if k in sources else "")
            for k in now
            if k not in resumable and k in saved and _norm(saved[k]) != _norm(now[k])]


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def check_resume(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                 resumable: Iterable[str], sources: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` when ``now`` changes a non-resumable option of ``saved``
    (one message naming every such option, and where its new value came from)."""
    diffs = changed_options(saved, now, resumable=resumable, sources=sources)
    if diffs:
        raise ConfigError("cannot resume: the checkpoint was trained with other options ("
                          + "; ".join(diffs) + "); leave them out to use the checkpoint's "
                          "values, or start a new run with another --out")


# ------------------------------------------------------------------------------ environment
def unknown_variables(known: Iterable[str], env: Mapping[str, str] | None = None
                      ) -> list[tuple[str, str | None]]:
    """``QGNET_*`` variables of ``env`` that are not in ``known``, each with the closest
    known name (or None)."""
    env = os.environ if env is None else env
    known = sorted(set(known))
    out = []
    tails = {k[len(ENV_PREFIX):]: k for k in known if k.startswith(ENV_PREFIX)}
    for key in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known):
        close = difflib.get_close_matches(key[len(ENV_PREFIX):], list(tails), n=1, cutoff=0.75)
        out.append((key, tails[close[0]] if close else None))
    return out


def check_environment(known: Iterable[str], env: Mapping[str, str] | None = None) -> None:
    """Refuse ``QGNET_*`` variables no qgnet command reads, as unknown TOML keys are refused
    (a misspelt variable would otherwise be ignored without a word)."""
    bad = unknown_variables(known, env)
    if bad:
        parts = [f"${k}" + (f" (did you mean ${c}?)" if c else "") for k, c in bad]
        raise ConfigError(f"unknown environment variable(s) {', '.join(parts)}: no qgnet "
                          f"command reads them; unset them or fix the name (docs/cli.md lists "
                          f"the variables)")


# ------------------------------------------------------------------------------ values
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
        typ = inner[0] if len(inner) == 1 else str
        # "" is "not set" for every optional field; "none" too, except where it is a string
        # value in its own right (--init none, --weights none)
        unset = {""} if typ is str else {"", "none"}
        if value is None or (isinstance(value, str) and value.strip().lower() in unset):
            return None
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


def check_value(value: Any, field: dataclasses.Field, *, source: str, hint: str = "") -> None:
    """Refuse ``value`` outside the field's :func:`option` bounds or choices (``None``
    passes; a tuple is checked element by element)."""
    if value is None:
        return
    if isinstance(value, tuple):
        for v in value:
            check_value(v, field, source=source, hint=hint)
        return
    meta = field.metadata
    what = f" ({meta['what']})" if meta.get("what") else ""
    tail = f"; {hint}" if hint else ""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}{what} must be one of {', '.join(map(str, choices))}, "
                          f"got {value!r}{tail}")
    lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if ((lo is not None and value < lo) or (hi is not None and value > hi)
            or (gt is not None and value <= gt)):
        low = f"> {gt}" if gt is not None else f">= {lo}" if lo is not None else None
        allowed = (f"{low} and <= {hi}" if low and hi is not None and gt is not None
                   else f"in {lo}..{hi}" if lo is not None and hi is not None
                   else low or f"<= {hi}")
        kind = ("a number" if isinstance(value, float) or "float" in str(field.type)
                else "an int")
        raise ConfigError(f"{source}{what} must be {kind} {allowed}, got {value!r}{tail}")


def config_dict(cfg) -> dict[str, Any]:
    """A resolved config as a plain, JSON-serialisable dict."""
    return plain(dataclasses.asdict(cfg))
