"""``qgnet-eval compare``: two checkpoints on the same episodes, B - A with a paired bootstrap CI.

Thin: parse, call :func:`model.fss.compare.compare_checkpoints`, print the table and
(``--json``) write the whole result, per-episode counts included.
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors
from cli.eval_fss import scoring_options, set_threads


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "checkpoints", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Give it twice: A (e.g. the baseline) then B; the difference is B - A.")
@click.option("--seed", "seeds", multiple=True, type=click.IntRange(min=0),
              help="Episode file seed; repeat for several (default 321; hsnet: 0).")
@click.option("--episodes", "n_episodes", type=click.IntRange(min=1), help="First N episodes of each file (default all).")
@click.option("--resamples", type=click.IntRange(min=1000), default=2000, show_default=True,
              help="Paired bootstrap draws of the episodes.")
@click.option("--bootstrap-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draws.")
@click.option("--shot", type=click.IntRange(min=1), help="Shots (default: checkpoint A's training shot).")
@click.option("--protocol", type=click.Choice(["pfenet", "hsnet"]), default="pfenet", show_default=True,
              help="Episode-sampling protocol (which episode files); how they are scored is --scoring.")
@scoring_options(default="Default pfenet.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root (default: checkpoint A's).")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root (default: checkpoint A's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--amp/--no-amp", default=None,
              help="bf16 autocast on CUDA (default: the precision each checkpoint was trained in).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Episodes per forward.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="DataLoader workers.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default: torch's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the full result (per-episode counts included) to this JSON file.")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def compare(checkpoints, seeds, n_episodes, resamples, bootstrap_seed, shot, protocol, scoring,
            hsnet_size, cache_dir, root, device, amp, batch_size, workers, threads, json_path,
            progress):
    """Score checkpoints A and B on the same episodes: mIoU and FB-IoU of each (mean ± std
    over episode seeds) and B - A with a paired bootstrap 95 % interval over episodes, under
    one scoring (--scoring, default pfenet: the paper's)."""
    if len(checkpoints) != 2:
        raise click.BadParameter(f"give exactly two (A then B), got {len(checkpoints)}",
                                 param_hint="--checkpoint")
    set_threads(threads)
    from model.fss.compare import compare_checkpoints, format_text

    seed_list = list(seeds) or ([0] if protocol == "hsnet" else [321])
    res = compare_checkpoints(checkpoints[0], checkpoints[1], seeds=seed_list, protocol=protocol,
                              scoring=scoring or "pfenet", hsnet_size=hsnet_size,
                              n_episodes=n_episodes, shot=shot, resamples=resamples,
                              bootstrap_seed=bootstrap_seed, cache_dir=cache_dir, root=root,
                              device=device, amp=amp, batch_size=batch_size, workers=workers,
                              progress=progress)
    click.echo(format_text(res))
    if json_path:
        from pipeline.fileio import write_json_atomic

        write_json_atomic(json_path, res)
        click.echo(f"written {json_path}")
