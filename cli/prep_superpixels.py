"""``qgnet-prep superpixels``: precompute SLIC / Felzenszwalb maps into a sharded Zarr store.

Thin: parse, resolve the config (defaults < --config TOML < QGNET_* < flags), call
:func:`pipeline.superpixel_stage.build_superpixel_store`, print the summary. The options
shared with ``qgnet-prep masks`` (scheduler, workers, limit, ...) live here too.
"""
from __future__ import annotations

import sys

import click

from cli._errors import friendly_errors
from pipeline.settings import format_command

SHOW_FAILURES = 5

SCHEDULER_HELP = ("threads (default), processes, sync, or a dask.distributed scheduler address "
                  "(tcp://HOST:PORT; progress is then per shard and the store must be on a "
                  "filesystem every worker sees).")


def stage_options(fn):
    """Options every store-building command takes."""
    options = [
        click.option("--dataset", help="Dataset: coco, coco-json, pascal, fss1000, deepglobe, "
                                       "isic, chest, folder, demo, or a name of your own with "
                                       "--root (or --train-json/--val-json). [default: demo]"),
        click.option("--root", type=click.Path(file_okay=False),
                     help="Dataset root (default: the reader's own default)."),
        click.option("--year", type=int, help="COCO only: 2014 or 2017 (default: the release "
                                              "under --root; 2014 when both are)."),
        click.option("--train-json", type=click.Path(dir_okay=False),
                     help="A COCO-style instances json for split train (labelme, CVAT, Label "
                          "Studio); its categories are the classes. Written with the other "
                          "--*-json/--*-images into <cache>/<dataset>/data/dataset.toml, so "
                          "later commands need only --dataset."),
        click.option("--train-images", type=click.Path(file_okay=False),
                     help="Folder the train json's file_name entries are relative to "
                          "(default: the json's folder)."),
        click.option("--val-json", type=click.Path(dir_okay=False),
                     help="A COCO-style instances json for split val."),
        click.option("--val-images", type=click.Path(file_okay=False),
                     help="Folder the val json's file_name entries are relative to."),
        click.option("--split", help="Split to process. [default: train]"),
        click.option("--workers", type=int, help="Parallel workers (threads or processes). "
                                                 "[default: 2]"),
        click.option("--scheduler", help=SCHEDULER_HELP),
        click.option("--limit", type=int, help="Only the first N images of the split."),
        click.option("--cache-dir", type=click.Path(file_okay=False),
                     help="Cache root (default: $QGNET_CACHE_DIR, else ./cache)."),
        click.option("--out", type=click.Path(), help="Explicit store path (a .zarr folder)."),
        click.option("--overwrite", is_flag=True, default=None,
                     help="Delete an existing store and start over (default: resume it)."),
        click.option("--max-failures", type=int,
                     help="Exit non-zero when more images than this failed. [default: 0]"),
        click.option("--shard-size", type=int, help="Images per shard (unit of writing and "
                                                    "resuming). [default: 128, fewer for "
                                                    "splits under 4,096 images]"),
        click.option("--progress/--no-progress", default=None, help="Show a progress bar."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML file with any of these options (flags win)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve(cls, kwargs: dict, section: str):
    """The command's config: defaults < ``--config`` TOML ``[section]`` < ``QGNET_*`` < flags,
    every value converted and range-checked by its field (:func:`cli._options.resolve`: unknown
    ``QGNET_*`` variables refused too; a bad value is a :class:`~pipeline.errors.ConfigError`,
    shown as one line by cli/_errors.py)."""
    import dataclasses

    from cli._options import resolve as resolve_options
    from pipeline.cache import validate_dataset_name
    from pipeline.errors import ConfigError

    config_file = kwargs.pop("config_file", None)
    cfg = resolve_options(cls, kwargs, config_file=config_file, section=section)
    validate_dataset_name(cfg.dataset)
    if cfg.year is not None and cfg.year not in (2014, 2017):
        raise ConfigError(f"--year must be 2014 or 2017, got {cfg.year}")
    splits = {s: (getattr(cfg, f"{s}_json"), getattr(cfg, f"{s}_images")) for s in ("train", "val")}
    if any(v is not None for pair in splits.values() for v in pair):
        from pipeline.datasets import DATASETS
        from pipeline.datasets.spec import prepare_json_dataset

        if cfg.root is not None:
            raise ConfigError("--root and --train-json/--val-json both name the data; give "
                              "one: the jsons (written to <cache>/<dataset>/data/dataset.toml) "
                              "or a --root holding a dataset.toml")
        if cfg.dataset in DATASETS and cfg.dataset != "coco-json":
            raise ConfigError(f"--train-json/--val-json describe your own COCO-style data; "
                              f"--dataset {cfg.dataset} is a built-in reader. Pass --dataset "
                              f"coco-json or a name of your own")
        root = prepare_json_dataset(cfg.dataset, cache_dir=cfg.cache_dir, splits=splits)
        cfg = dataclasses.replace(cfg, root=str(root))
    return cfg


def run_and_report(build, *, max_failures: int):
    """Call ``build()`` -> (store, report); print the summary; non-zero exit on more failures
    than allowed. Errors are the wrapper's (cli/_errors.py): project errors as one line."""
    try:
        store, report = build()
    except KeyboardInterrupt as e:
        click.echo(f"\n{e or 'interrupted'}; re-run the same command to resume", err=True)
        sys.exit(130)
    for line in report.lines():
        click.echo(line)
    failures = store.failures if report.failures else []
    for f in failures[:SHOW_FAILURES]:
        click.echo(f"  failed: {f['id']}: {f['reason']}")
    if len(failures) > SHOW_FAILURES:
        click.echo(f"  ... {len(failures) - SHOW_FAILURES} more: "
                   f"{format_command('qgnet-prep', 'info', '--failures', store.path)}")
    if report.failures > max_failures:
        raise click.ClickException(f"{report.failures} image(s) failed, more than --max-failures "
                                   f"{max_failures}; the store is complete but lacks them "
                                   f"(see the reasons above)")
    return store, report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--method", type=click.Choice(["slic", "felzenszwalb"]),
              help="Superpixel method. [default: slic]")
@click.option("--n-segments", type=int, help="SLIC: approximate number of superpixels.")
@click.option("--compactness", type=float, help="SLIC: colour vs. space weight.")
@click.option("--max-iter", type=int, help="SLIC: k-means iterations.")
@click.option("--scale", type=float, help="Felzenszwalb: larger = larger segments.")
@click.option("--sigma", type=float, help="Felzenszwalb: Gaussian pre-smoothing.")
@click.option("--min-size", type=int, help="Felzenszwalb: minimum segment size (px).")
@click.option("--backend", type=click.Choice(["auto", "fast-slic", "numba", "skimage"]),
              help="Kernel backend; auto = fast-slic > numba > skimage for slic, numba > "
                   "skimage for felzenszwalb. Part of the store key. [default: auto]")
@stage_options
@friendly_errors
def superpixels(**kwargs):
    """Precompute superpixel maps of one split into a sharded Zarr store.

    Defaults of the method parameters come from pipeline.superpixels.DEFAULTS. Re-running
    the same command resumes an interrupted run; a complete store is left as it is.
    """
    from pipeline.superpixel_stage import (
        METHOD_PARAMS,
        SuperpixelConfig,
        build_superpixel_store,
    )

    cfg = resolve(SuperpixelConfig, kwargs, "superpixels")
    params = {k: getattr(cfg, k) for names in METHOD_PARAMS.values() for k in names}
    run_and_report(lambda: build_superpixel_store(
        cfg.dataset, root=cfg.root, split=cfg.split, method=cfg.method, params=params,
        backend=cfg.backend, out=cfg.out, cache_dir=cfg.cache_dir, workers=cfg.workers,
        scheduler=cfg.scheduler, limit=cfg.limit, overwrite=cfg.overwrite,
        shard_size=cfg.shard_size, progress=cfg.progress, year=cfg.year),
        max_failures=cfg.max_failures)
