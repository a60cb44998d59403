"""``qgnet-eval fss``: mIoU / FB-IoU of a checkpoint on fixed test episodes.

Thin: parse, call :func:`model.fss.evaluate.evaluate`, print the table. The network
(backbone, weights, prior extractor or ``--no-prior-map`` baseline, crop) is rebuilt from
the checkpoint; results.json / results.md are written next to it (or into ``--out``).
"""
from __future__ import annotations

import click


def parse_ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def common_options(f):
    """Options shared by ``fss``, ``regions`` and ``show``."""
    opts = [
        click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
                     help="best.pt / last.pt of `qgnet-train fss`."),
        click.option("--shot", type=int, help="Shots (default: the training shot)."),
        click.option("--protocol", type=click.Choice(["pfenet", "hsnet"]), default="pfenet",
                     show_default=True, help="Episode protocol of the episode files."),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root (default: the checkpoint's)."),
        click.option("--root", type=click.Path(file_okay=False), help="Dataset root (default: the checkpoint's)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA."),
        click.option("--workers", type=int, default=2, show_default=True, help="DataLoader workers."),
        click.option("--threads", type=int, default=0, help="torch CPU threads (default: torch's)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.option("--episodes", "n_episodes", type=int, help="First N episodes of each file (default all).")
@click.option("--seeds", default=None, help="Episode seeds, comma-separated (default 321; hsnet: 0). "
                                            "Several -> mean and std.")
@click.option("--batch-size", type=int, default=None,
              help="Episodes per forward (default 4 on CUDA, 1 on CPU; the scores do not depend on it).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for results.json/.md "
                                                               "(default: next to the checkpoint).")
@click.option("--progress/--no-progress", default=True)
def fss(checkpoint, shot, protocol, cache_dir, root, device, amp, workers, threads, n_episodes, seeds,
        batch_size, out, progress):
    """Evaluate a checkpoint (PFENet protocol: scored at the original label resolution)."""
    set_threads(threads)
    from model.fss.evaluate import evaluate
    from model.fss.results import format_markdown
    from pipeline.store import StoreError

    seed_list = parse_ints(seeds) or ([0] if protocol == "hsnet" else [321])
    try:
        res = evaluate(checkpoint, shot=shot, seeds=seed_list, protocol=protocol,
                       n_episodes=n_episodes, root=root, cache_dir=cache_dir, device=device,
                       amp=amp, batch_size=batch_size, workers=workers, progress=progress,
                       out_dir=out)
    except (StoreError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_markdown(res))
