"""``qgnet-prep demo``: generate the built-in demo dataset into ``<cache>/demo/data``."""
from __future__ import annotations

import click

from cli._errors import friendly_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache root (default: $QGNET_CACHE_DIR, else ./cache).")
@click.option("--n-train", type=click.IntRange(min=1), default=240, show_default=True,
              help="Training images.")
@click.option("--n-val", type=click.IntRange(min=1), default=80, show_default=True,
              help="Validation images.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@click.option("--overwrite", is_flag=True, help="Regenerate even when the data is complete.")
@friendly_errors
def demo(cache_dir, n_train, n_val, seed, overwrite):
    """Generate the demo dataset: 20 classes of textured shapes on real photo backgrounds.

    Writes the folder layout (images/, masks/, classes.txt, train.txt, val.txt, DONE) to
    <cache>/demo/data; open it with `--dataset demo`. A complete dataset is left as it is
    unless --overwrite is given.
    """
    import time

    from pipeline.cache import dataset_cache_dir
    from pipeline.datasets.demo import prepare_demo

    target = dataset_cache_dir("demo", cache_dir=cache_dir) / "data"
    if (target / "DONE").is_file() and not overwrite:
        click.echo(f"demo dataset already complete at {target} (pass --overwrite to regenerate)")
        return
    t0 = time.perf_counter()
    path = prepare_demo(cache_dir, n_train=n_train, n_val=n_val, seed=seed, overwrite=overwrite)
    click.echo(f"demo dataset: {n_train} train + {n_val} val images, 20 classes, written to "
               f"{path} in {time.perf_counter() - t0:.1f} s")
