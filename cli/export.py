"""``qgnet-export``: one self-contained model file from a few-shot checkpoint.

The bundle holds the network description and every weight (F, Fp, the trained head), so
``qgnet-predict --model``, ``qgnet-app`` and :class:`model.predict.Segmenter` load it
without the training cache or the original backbone / prior weight files.
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="best.pt / last.pt of `qgnet-train fss`.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The bundle to write (e.g. model.qgnet).")
@friendly_errors
def main(checkpoint, out):
    """Write a one-file model bundle (loaded with weights_only=True)."""
    import os

    from model.predict import export_bundle

    path = export_bundle(checkpoint, out)
    click.echo(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB); use it with "
               f"qgnet-predict --model {path}")


if __name__ == "__main__":
    main()
