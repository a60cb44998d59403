"""``qgnet-prep episodes``: fold splits, training lists and fixed test episodes.

Thin: parse, resolve the config (defaults < TOML ``[episodes]`` < ``QGNET_*`` < command
line), call :func:`pipeline.episodes.build_episodes`. Needs the ``train`` (or ``aug``) and
``val`` mask stores of the dataset (``qgnet-prep masks``).
"""
from __future__ import annotations

from dataclasses import dataclass

import click


@dataclass(frozen=True)
class EpisodesConfig:
    """Options of ``qgnet-prep episodes`` (empty tuples / 0 mean "the protocol's default")."""

    dataset: str = ""
    cache_dir: str = ""
    folds: tuple = ()              # default: every fold
    shots: tuple = (1, 5)
    seeds: tuple = ()              # default: 321 (pfenet) or 0 (hsnet), plus 123 (validation)
    episodes: int = 0              # default: 1000; 20,000 for COCO with pfenet
    protocol: str = "pfenet"
    min_pixels: int = 2048
    drop_novel_images: bool = False
    pascal_train_set: str = "train"
    coco_split: str = "interleaved"
    folds_file: str = ""


def _ints(values, what: str) -> tuple[int, ...]:
    """Repeatable options that also take comma lists: ``--seed 1 --seed 2,3``."""
    out: list[int] = []
    for v in values or ():
        for tok in str(v).split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                out.append(int(tok))
            except ValueError:
                raise click.BadParameter(f"{tok!r} is not an integer", param_hint=what) from None
    return tuple(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", help="Dataset name (coco, pascal, folder, demo).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root.")
@click.option("--fold", "folds", multiple=True, help="Fold(s) to build; default all. Repeatable or 0,1.")
@click.option("--shot", "shots", multiple=True, help="Shot(s); default 1 and 5. Repeatable or 1,5.")
@click.option("--seed", "seeds", multiple=True,
              help="Episode seed(s), one file per seed; default 321 (pfenet) or 0 (hsnet) for testing, plus "
                   "123 for validation during training.")
@click.option("--episodes", type=int, help="Episodes per file; default 1000 (COCO pfenet: 20000).")
@click.option("--protocol", type=click.Choice(["pfenet", "hsnet"]), help="Test-episode protocol.")
@click.option("--min-pixels", type=int, help="Pixels a class needs in an image to count (2048).")
@click.option("--drop-novel-images/--keep-novel-images", default=None,
              help="BAM: drop training images holding any pixel of a test class "
                   "(default: keep them, PFENet, with those pixels as background).")
@click.option("--pascal-train-set", type=click.Choice(["train", "aug"]),
              help="PASCAL training split: train (PFENet's 5,953) or aug (10,582).")
@click.option("--coco-split", type=click.Choice(["interleaved", "contiguous"]),
              help="COCO-20i fold split (default interleaved).")
@click.option("--folds-file", type=click.Path(dir_okay=False, exists=True),
              help="folds.txt for folder datasets (default: <dataset root>/folds.txt if present).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (table [episodes]).")
def episodes(dataset, cache_dir, folds, shots, seeds, episodes, protocol, min_pixels,
             drop_novel_images, pascal_train_set, coco_split, folds_file, config_file):
    """Write folds.json, train-fold{F}.npz and test-fold{F}-shot{K}-{protocol}-seed{S}.npz."""
    from pipeline.config import config_dict, resolve_config
    from pipeline.episodes import build_episodes
    from pipeline.store import StoreError

    cli = {"dataset": dataset, "cache_dir": cache_dir, "episodes": episodes,
           "protocol": protocol, "min_pixels": min_pixels,
           "drop_novel_images": drop_novel_images, "pascal_train_set": pascal_train_set,
           "coco_split": coco_split, "folds_file": folds_file,
           "folds": _ints(folds, "--fold") or None, "shots": _ints(shots, "--shot") or None,
           "seeds": _ints(seeds, "--seed") or None}
    try:
        cfg = resolve_config(EpisodesConfig, cli=cli, config_file=config_file, section="episodes")
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    if not cfg.dataset:
        raise click.UsageError("--dataset is required (or QGNET_DATASET / dataset in --config)")
    if cfg.pascal_train_set == "aug" and cfg.dataset != "pascal":
        raise click.UsageError("--pascal-train-set aug applies to --dataset pascal only")
    try:
        build_episodes(
            cfg.dataset, cache_dir=cfg.cache_dir or None,
            folds=_ints(cfg.folds, "folds") or None, shots=_ints(cfg.shots, "shots") or (1, 5),
            seeds=_ints(cfg.seeds, "seeds") or None, protocol=cfg.protocol,
            n_episodes=cfg.episodes or None, min_pixels=cfg.min_pixels,
            drop_novel_images=cfg.drop_novel_images, train_set=cfg.pascal_train_set,
            coco_split=cfg.coco_split, folds_file=cfg.folds_file or None,
            config=config_dict(cfg), echo=click.echo)
    except (StoreError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
