"""``qgnet-train prior``: pretrain the prior extractor (MoCo v2, global + superpixel-local).

Thin: the options are :class:`model.prior.config.PriorConfig`'s fields (cli/_options.py);
resolve the config (defaults < TOML ``[prior]`` < ``QGNET_*`` < command line; with
``--resume`` the checkpoint's config is the base and only the resumable options may differ,
whatever their source: :func:`model.run.run_config`, the same rule as ``qgnet-train fss``),
call :func:`model.prior.trainer.train_prior`. Torch is imported only when the command runs.

DDP: ``torchrun --nproc-per-node 2 -m cli.train prior ...`` (every rank parses the same
command line; ``--batch-size`` is the global batch).
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors
from cli._options import check_environment, config_options
from model.prior.config import PriorConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_options(PriorConfig, section="prior",
                overrides={"resume": {"is_flag": False, "flag_value": "auto"}})
@friendly_errors
def prior(config_file, **given):
    """Pretrain the prior extractor with MoCo v2 on whole images and superpixel patches.

    Needs the patch maps of the split: qgnet-prep superpixels --dataset D --split S --method M.
    Writes config.json, metrics.jsonl, train.log, checkpoints/ and prior_extractor.pt into
    the run dir.
    """
    from model.prior.config import RESUMABLE
    from model.prior.trainer import train_prior
    from model.run import run_config

    check_environment(PriorConfig)
    cfg = run_config(PriorConfig, cli=given, config_file=config_file, section="prior",
                     kind="prior", resumable=RESUMABLE,
                     reset={"resume": None, "export_only": False, "max_steps": None, "out": None})
    run_dir = train_prior(cfg)
    click.echo(f"run dir: {run_dir}")
