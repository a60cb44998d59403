"""``qgnet-prep``: the offline stages (no torch imported)."""
from __future__ import annotations

import click

from cli._lazy import LazyGroup

COMMANDS = {
    "demo": ("cli.prep_demo:demo", "Generate the built-in demo dataset (folder layout) into the cache."),
    "superpixels": ("cli.prep_superpixels:superpixels",
                    "Precompute SLIC / Felzenszwalb patch maps into a sharded Zarr store."),
    "masks": ("cli.prep_masks:masks", "Decode every class mask once into a sharded Zarr store."),
    "episodes": ("cli.prep_episodes:episodes",
                 "Fold splits, training lists and fixed test episodes (index arrays)."),
    "info": ("cli.prep_info:info", "Print what a store or episode folder holds."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qgnet")
def main():
    """Offline preprocessing for qgnet: demo data, superpixels, masks, episodes."""


if __name__ == "__main__":
    main()
