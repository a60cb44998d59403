"""``qgnet-eval bench``: one checkpoint on every benchmark whose data is present, one table.

Thin: the options are :class:`model.fss.bench.BenchConfig`'s fields (cli/_options.py);
resolve the config (defaults < TOML ``[bench]`` < ``QGNET_*`` < command line, every value
range-checked before anything is written), call :func:`model.fss.bench.run_bench`, print
the table it wrote (bench.md beside bench.json).
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors
from cli._options import config_options
from cli.eval_fss import set_threads
from model.fss.bench import BenchConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_options(BenchConfig, section="bench", overrides={
    "checkpoint": {"type": click.Path(dir_okay=False)},
    "benchmarks": {"metavar": "NAME[,NAME...]"}, "shots": {"metavar": "K[,K...]"}})
@friendly_errors
def bench(config_file, **given):
    """Score one checkpoint on every benchmark whose data is present (PASCAL-5i, COCO-20i,
    FSS-1000, Deepglobe, ISIC, Chest X-ray, any dataset in the cache), each with its own
    protocol, episode count, seed and published scoring; the checkpoint's own dataset at its
    fold, any other at fold 0 (cross-domain). Writes bench.md and bench.json: one row per
    benchmark x shot, and the absent benchmarks with where to get them and the commands that
    prepare them. Resumable: finished rows whose inputs did not change are kept."""
    from cli._options import resolve
    from model.fss.bench import format_markdown, run_bench

    cfg = resolve(BenchConfig, given, config_file=config_file, section="bench")
    if not cfg.checkpoint:
        raise click.UsageError("--checkpoint is required (or QGNET_CHECKPOINT / checkpoint "
                               "in --config)")
    set_threads(cfg.threads)
    table = run_bench(cfg, echo=click.echo)
    click.echo(format_markdown(table))
    click.echo(f"\nwritten: {', '.join(table['written'])}")
