"""``qgnet-prep masks``: decode every class mask of a split once into a sharded Zarr store."""
from __future__ import annotations

import click

from cli._errors import friendly_errors
from cli.prep_superpixels import resolve, run_and_report, stage_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@stage_options
@friendly_errors
def masks(**kwargs):
    """Decode the class masks of one split (0 bg, 1..C, 255 ignore) and count class pixels.

    Re-running the same command resumes an interrupted run; a complete store is left as it is.
    """
    from pipeline.mask_stage import MaskConfig, build_mask_store

    cfg = resolve(MaskConfig, kwargs, "masks")
    run_and_report(lambda: build_mask_store(
        cfg.dataset, root=cfg.root, split=cfg.split, out=cfg.out, cache_dir=cfg.cache_dir,
        workers=cfg.workers, scheduler=cfg.scheduler, limit=cfg.limit, overwrite=cfg.overwrite,
        shard_size=cfg.shard_size, progress=cfg.progress, year=cfg.year),
        max_failures=cfg.max_failures)
