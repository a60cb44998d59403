"""Command-line options from a config dataclass, and the one way a command resolves its config.

A config field declares everything about its option once (``pipeline.settings.option``:
default, bounds, choices, help); :func:`config_options` turns the fields into click options,
so adding an option to ``qgnet-train fss`` or ``qgnet-train prior`` is one line in its
config. Bounds are not click ranges: they must hold for TOML and ``QGNET_*`` values too,
which click never sees, so :func:`pipeline.settings.resolve_config` checks every source with
one message format. (click's ``auto_envvar_prefix`` would name the variables
``QGNET_TRAIN_FSS_FOLD``, per command, and read them untyped; ``default_map`` would put the
TOML file in front of click's own defaults but not check it. Commands without a config
dataclass -- export, predict, app, eval compare/regions/show, the demo -- read no file or
environment, so their numeric options are click ``IntRange`` / ``FloatRange``.)

:func:`resolve` refuses ``QGNET_*`` variables that no command reads, with the closest
known name, as unknown TOML keys are refused.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from typing import Any, Mapping

import click

# every config a command resolves from a TOML file and the environment (command -> class)
CONFIGS = {
    "qgnet-prep superpixels": "pipeline.superpixel_stage:SuperpixelConfig",
    "qgnet-prep masks": "pipeline.mask_stage:MaskConfig",
    "qgnet-prep episodes": "pipeline.episode_stage:EpisodesConfig",
    "qgnet-train fss": "model.fss.config:FssConfig",
    "qgnet-train prior": "model.prior.config:PriorConfig",
    "qgnet-eval fss": "model.fss.evaluate:EvalConfig",
    "qgnet-eval bench": "model.fss.bench:BenchConfig",
}
# QGNET_* variables read outside the configs
OTHER_VARIABLES = {
    "QGNET_CACHE_DIR": "the cache root of every command (pipeline.cache)",
    "QGNET_DEMO_THREADS": "torch threads of `make demo` (cli/demo.py)",
    "QGNET_CAMVID": "the CamVid folder of bench/superpixels.py and bench/fh_contract.py",
    "QGNET_BENCH_QUICK": "a short kernel benchmark in bench/run_all.py",
    "QGNET_APP_SCREENSHOT": "where the qgnet-app browser test saves its screenshot",
}


def config_options(cls, *, section: str, overrides: Mapping[str, Mapping[str, Any]] | None = None):
    """Decorator: one click option per field of ``cls`` (field order), every default ``None``
    (= not given), plus ``--config FILE`` (TOML, top level or table ``[section]``).

    The type comes from the annotation (int, float, str; a boolean is a ``--x/--no-x``
    pair, or the pair its ``flag`` names), the choices and help from its ``option``;
    ``overrides`` adds click keyword arguments to a field's option."""
    from pipeline.settings import field_types

    types_ = field_types(cls)
    opts = [_option(f, types_[f.name], (overrides or {}).get(f.name, {}))
            for f in dataclasses.fields(cls)]
    opts.append(click.option("--config", "config_file", type=click.Path(dir_okay=False),
                             help=f"TOML config file (top level or table [{section}])."))

    def decorate(fn):
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return decorate


def _option(field: dataclasses.Field, typ, extra: Mapping[str, Any]):
    meta = field.metadata
    flag = meta.get("flag") or "--" + field.name.replace("_", "-")
    base = _bare(typ)
    kw: dict[str, Any] = {"default": None, "help": meta.get("help")}
    if base is bool:
        if "/" not in flag:
            flag = f"{flag}/--no-{flag[2:]}"
    elif meta.get("choices") is not None:
        kw["type"] = click.Choice([str(c) for c in meta["choices"]])
    elif base is int:
        kw["type"] = click.INT
    elif base is float:
        kw["type"] = click.FLOAT
    elif meta.get("folder"):
        kw["type"] = click.Path(file_okay=False)
    return click.option(flag, field.name, **{**kw, **extra})


def _bare(typ):
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        return inner[0] if len(inner) == 1 else str
    return typ


def resolve(cls, cli: Mapping[str, Any], *, section: str, config_file=None, **kwargs):
    """``cls`` from its defaults < TOML ``config_file`` < ``QGNET_*`` < ``cli``
    (:func:`pipeline.settings.resolve_config`, ``kwargs`` passed on), after refusing unknown
    ``QGNET_*`` variables (:func:`check_environment`)."""
    from pipeline.settings import resolve_config

    check_environment(cls)
    return resolve_config(cls, cli=cli, config_file=config_file, section=section, **kwargs)


def check_environment(cls, env: Mapping[str, str] | None = None) -> None:
    """Refuse a ``QGNET_*`` variable that no qgnet command reads (a typo such as
    ``QGNET_PRIOR_MAPS`` would be ignored without a word); one that another command reads
    (``QGNET_SHARD_SIZE`` while training) is fine. The other configs are imported only when
    a variable is not ``cls``'s own."""
    from pipeline.settings import ENV_PREFIX, env_names
    from pipeline.settings import check_environment as refuse

    env = os.environ if env is None else env
    known = set(env_names(cls)) | set(OTHER_VARIABLES)
    if all(k in known for k in env if k.startswith(ENV_PREFIX)):
        return
    refuse(known_variables(), env)


def known_variables() -> set[str]:
    """Every ``QGNET_*`` variable some qgnet command reads."""
    from pipeline.settings import env_names

    known = set(OTHER_VARIABLES)
    for target in CONFIGS.values():
        module, name = target.split(":")
        known |= set(env_names(getattr(importlib.import_module(module), name)))
    return known
