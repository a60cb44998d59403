"""``qgnet-eval``: few-shot evaluation, region-map recall and figure panels."""
from __future__ import annotations

import click

from cli._lazy import LazyGroup

COMMANDS = {
    "bench": ("cli.eval_bench:bench",
              "One checkpoint on every benchmark whose data is present: bench.md + bench.json."),
    "compare": ("cli.eval_compare:compare",
                "Two checkpoints on the same episodes: B - A with a paired bootstrap 95 % CI."),
    "fss": ("cli.eval_fss:fss", "Evaluate a checkpoint on fixed test episodes (mIoU, FB-IoU)."),
    "regions": ("cli.eval_regions:regions",
                "Recall of the guided and prior region maps at thresholds 0.1..0.9 (Table 7)."),
    "show": ("cli.eval_show:show", "PNG panels: query, support, region maps, prediction, truth."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qgnet")
def main():
    """Evaluation for qgnet."""


if __name__ == "__main__":
    main()
