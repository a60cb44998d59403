"""``qgnet-train fss``: train QGNet (or the ``--no-prior-map`` PFENet baseline) on one fold.

Thin: the options are :class:`model.fss.config.FssConfig`'s fields (cli/_options.py); resolve
the config (defaults < TOML ``[fss]`` < ``QGNET_*`` < command line; with ``--resume`` the
checkpoint's config is the base and only the resumable options may differ, whatever their
source: :func:`model.run.run_config`, the same rule as ``qgnet-train prior``), call
:func:`model.fss.trainer.train_fss`. Errors are cli/_errors.py's (one line).

DDP: ``torchrun --nproc-per-node 2 -m cli.train fss ...`` (``--batch-size`` is global).
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors
from cli._options import check_environment, config_options
from model.fss.config import FssConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_options(FssConfig, section="fss")
@friendly_errors
def fss(config_file, **given):
    """Train the few-shot network on one fold with PFENet's recipe.

    Needs the mask stores and episode files of the dataset:
    qgnet-prep masks --dataset D --split train|val, then qgnet-prep episodes --dataset D.
    Writes config.json, metrics.jsonl, train.log, last.pt and best.pt into the run dir.
    """
    import shlex

    from model.fss.config import RESUMABLE
    from model.fss.trainer import train_fss
    from model.run import run_config

    check_environment(FssConfig)
    cfg = run_config(FssConfig, cli=given, config_file=config_file, section="fss", kind="fss",
                     resumable=RESUMABLE, reset={"max_steps": None, "out": None})
    run_dir = train_fss(cfg)
    click.echo(f"run dir: {run_dir}")
    click.echo(f"evaluate with: qgnet-eval fss --checkpoint {shlex.quote(str(run_dir / 'best.pt'))}")
