"""``qgnet-train``: prior pretraining and few-shot training."""
from __future__ import annotations

import click

from cli._lazy import LazyGroup

COMMANDS = {
    "prior": ("cli.train_prior:prior",
              "Pretrain the prior extractor (MoCo-v2 global + superpixel-local InfoNCE)."),
    "fss": ("cli.train_fss:fss", "Train the QGNet few-shot network on one fold."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qgnet")
def main():
    """Training for qgnet."""


if __name__ == "__main__":
    main()
