"""``qgnet-eval regions``: recall of the guided and prior region maps (QGNet Table 7).

For thresholds 0.1..0.9: the fraction of ground-truth foreground pixels (original
resolution, 255 ignored) whose map value is >= t, summed over all episodes; precision and
IoU too. Writes ``regions.json`` / ``regions.md`` next to the checkpoint (or ``--out``).
"""
from __future__ import annotations

from pathlib import Path

import click

from cli._errors import friendly_errors
from cli.eval_fss import common_options, set_threads


def regions_markdown(res: dict) -> str:
    run = res["runs"][0]
    g, p = run["guided"], run.get("prior")
    lines = [f"Region-map recall, {res['dataset']} fold {res['fold']}, {res['shot']}-shot, "
             f"{run['episodes']} episodes (seed {run['seed']}), original label resolution.", "",
             "| threshold | guided recall | prior recall | guided precision | prior precision |",
             "|---|---|---|---|---|"]
    for t in g["recall"]:
        pr = f"{p['recall'][t] * 100:.2f}" if p else "-"
        pp = f"{p['precision'][t] * 100:.2f}" if p else "-"
        lines.append(f"| {t} | {g['recall'][t] * 100:.2f} | {pr} | {g['precision'][t] * 100:.2f} | {pp} |")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.option("--episodes", "n_episodes", type=click.IntRange(min=1),
              help="First N episodes (default all).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Episode seed (default 321; hsnet 0).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: next to the checkpoint).")
@friendly_errors
def regions(checkpoint, shot, protocol, cache_dir, root, device, amp, workers, threads, n_episodes,
            seed, out):
    """Recall of the guided (PFENet prior) and prior (QGNet) region maps at 0.1..0.9."""
    set_threads(threads)
    from model.fss.evaluate import evaluate
    from pipeline.fileio import write_json_atomic

    seed = seed if seed is not None else (0 if protocol == "hsnet" else 321)
    res = evaluate(checkpoint, shot=shot, seeds=[seed], protocol=protocol, n_episodes=n_episodes,
                   root=root, cache_dir=cache_dir, device=device, amp=amp, workers=workers,
                   write=False, regions=True)
    folder = Path(out) if out else Path(checkpoint).parent
    run = res["runs"][0]
    write_json_atomic(folder / "regions.json", {
        "checkpoint": str(checkpoint), "dataset": res["dataset"], "fold": res["fold"],
        "shot": res["shot"], "protocol": protocol, "seed": run["seed"], "episodes": run["episodes"],
        "guided": run["guided"], "prior": run.get("prior"), "miou": run["miou"]})
    md = regions_markdown(res)
    (folder / "regions.md").write_text(md + "\n")
    click.echo(md)
