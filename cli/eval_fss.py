"""``qgnet-eval fss``: mIoU / FB-IoU of a checkpoint on fixed test episodes.

Thin: parse, resolve the config (:class:`model.fss.evaluate.EvalConfig`: defaults < TOML
``[eval]`` < ``QGNET_*`` < command line), call :func:`model.fss.evaluate.evaluate`, print
the table. The network (backbone, weights, prior extractor or ``--no-prior-map`` baseline,
crop) is rebuilt from the checkpoint; results.json / results.md are written next to it (or
into ``--out``).
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors


def parse_ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def common_options(f=None, *, resolved: bool = False):
    """Options shared by ``fss``, ``regions`` and ``show``.

    ``resolved``: the command resolves its config (``fss``: defaults < TOML < ``QGNET_*`` <
    command line), so no option has a click default (``None`` = not given) and
    ``--checkpoint`` may come from the config file or the environment too."""
    if f is None:
        return lambda g: common_options(g, resolved=resolved)

    def dflt(value, help_="", shown=None):  # a click default, or the help names it
        if resolved:
            return {"default": None, "help": f"{help_.rstrip('.')} (default {shown or value})."}
        return {"default": value, "show_default": True, **({"help": help_} if help_ else {})}

    def count(low: int):  # resolved: EvalConfig checks the bound for every source
        return int if resolved else click.IntRange(min=low)

    opts = [
        click.option("--checkpoint", required=not resolved, type=click.Path(dir_okay=False),
                     help="best.pt / last.pt of `qgnet-train fss`."
                          + (" Required." if resolved else "")),
        click.option("--shot", type=count(1), help="Shots (default: the training shot)."),
        click.option("--protocol", type=click.Choice(["pfenet", "hsnet", "patnet"]),
                     **dflt("pfenet", "Episode-sampling protocol: which episode files are read "
                                      "(`qgnet-prep episodes --protocol`); how predictions are "
                                      "scored is --scoring.",
                            shown="the benchmark's: pfenet; hsnet for fss1000; patnet for "
                                  "deepglobe, isic, chest")),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root (default: the checkpoint's)."),
        click.option("--root", type=click.Path(file_okay=False), help="Dataset root (default: the checkpoint's)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), **dflt("auto", "Device." if resolved else "")),
        click.option("--amp/--no-amp", default=None,
                     help="bf16 autocast on CUDA (default: the precision the checkpoint was "
                          "trained in; fp32 on CPU)."),
        click.option("--workers", type=count(0), **dflt(2, "DataLoader workers.")),
        click.option("--threads", type=count(1), default=None,
                     help="torch CPU threads (default: torch's)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


SCORING_HELP = ("How predictions are scored (not which episodes: --protocol). pfenet: PFENet's "
                "test.py (logits resized to the label padded to a square), the number "
                "comparable with the QGNet / PFENet / BAM tables; exact: the exact inverse of "
                "the test resize (ours). Both come from one pass and both are reported; the "
                "one named here is the headline. hsnet: HSNet's test.py, query and supports "
                "resized to a 400 x 400 square and scored there; hsnet-original: the same input "
                "scored at the original label (HSNet's --use_original_imgsize).")
BENCHMARK_SCORING = ("Default: the benchmark's, as its published tables (pfenet for PASCAL, "
                     "COCO and folder datasets; hsnet for fss1000, deepglobe, isic, chest).")


def scoring_options(f=None, *, default: str = BENCHMARK_SCORING):
    """--scoring and --hsnet-size (qgnet-eval fss and compare); ``default``: the sentence
    of the help that says what an unset --scoring means."""
    if f is None:
        return lambda g: scoring_options(g, default=default)
    f = click.option("--hsnet-size", type=int, default=None,
                     help="Side of HSNet's square for --scoring hsnet / hsnet-original "
                          "(default 400, HSNet's).")(f)
    from model.fss.bench import SCORING_CHOICES  # torch-free: --help stays cheap

    return click.option("--scoring", type=click.Choice(SCORING_CHOICES),
                        default=None, help=f"{SCORING_HELP} {default}")(f)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options(resolved=True)
@click.option("--dataset", help="Evaluate on another dataset's episodes than the checkpoint's "
                                "(e.g. a PASCAL model on fss1000, deepglobe, isic, chest: "
                                "fold 0, no fine-tuning). Default: the checkpoint's.")
@scoring_options
@click.option("--episodes", "n_episodes", type=int, help="First N episodes of each file (default all).")
@click.option("--seeds", default=None, help="Episode seeds, comma-separated (default: the "
                                            "benchmark's: 321; 0 under hsnet, patnet). "
                                            "Several -> mean and std.")
@click.option("--batch-size", type=int, default=None,
              help="Episodes per forward (default 4 on CUDA, 1 on CPU; the scores do not depend on it).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for results.json/.md "
                                                               "(default: next to the checkpoint).")
@click.option("--progress/--no-progress", default=None, help="tqdm progress bar (default on).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (top level or table [eval]).")
@friendly_errors
def fss(config_file, **given):
    """Evaluate a checkpoint on fixed episodes: mIoU and FB-IoU under PFENet's scoring (the
    paper's tables) and the exact one, or HSNet's (--scoring). Unset, --protocol, --scoring
    and --seeds are the benchmark's (the checkpoint's dataset, or --dataset): FSS-1000 and
    the cross-domain sets are scored like their published tables without flags."""
    from cli._options import resolve
    from model.fss.evaluate import EvalConfig, evaluate
    from model.fss.results import format_markdown

    cfg = resolve(EvalConfig, given, config_file=config_file, section="eval")
    if not cfg.checkpoint:
        raise click.UsageError("--checkpoint is required (or QGNET_CHECKPOINT / checkpoint "
                               "in --config)")
    set_threads(cfg.threads)
    res = evaluate(cfg.checkpoint, dataset=cfg.dataset, shot=cfg.shot, seeds=cfg.seeds,
                   protocol=cfg.protocol, scoring=cfg.scoring, hsnet_size=cfg.hsnet_size,
                   n_episodes=cfg.n_episodes, root=cfg.root,
                   cache_dir=cfg.cache_dir, device=cfg.device, amp=cfg.amp,
                   batch_size=cfg.batch_size, workers=cfg.workers, progress=cfg.progress,
                   out_dir=cfg.out)
    click.echo(format_markdown(res))
