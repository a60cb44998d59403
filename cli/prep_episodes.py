"""``qgnet-prep episodes``: fold splits, training lists and fixed test episodes.

Thin: parse, resolve the config (defaults < TOML ``[episodes]`` < ``QGNET_*`` < command
line), call :func:`pipeline.episode_stage.build_episodes`. Needs the ``train`` (or ``aug``) and
``val`` mask stores of the dataset (``qgnet-prep masks``).
"""
from __future__ import annotations

import click

from cli._errors import friendly_errors


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
@click.option("--dataset", help="Dataset name (pascal, coco, fss1000, deepglobe, isic, chest, "
                                "coco-json, folder, demo, or your own).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root.")
@click.option("--fold", "folds", multiple=True, help="Fold(s) to build; default all. Repeatable or 0,1.")
@click.option("--shot", "shots", multiple=True, help="Shot(s); default 1 and 5. Repeatable or 1,5.")
@click.option("--seed", "seeds", multiple=True,
              help="Episode seed(s), one file per seed; default 321 (pfenet) or 0 (hsnet, patnet) for "
                   "testing, plus 123 for validation during training.")
@click.option("--episodes", type=int, help="Episodes per file; default 1000 (COCO pfenet: 20000; "
                                           "patnet: 600; fss1000: every test image once).")
@click.option("--protocol", type=click.Choice(["pfenet", "hsnet", "patnet"]),
              help="Test-episode protocol (default: the benchmark's: hsnet for fss1000, patnet "
                   "for deepglobe, isic and chest, pfenet otherwise).")
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
@click.option("--training-lists/--no-training-lists", default=None,
              help="Write the training lists (default: where the benchmark trains; fss1000: "
                   "when its train mask store exists; deepglobe, isic, chest: never).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (table [episodes]).")
@friendly_errors
def episodes(dataset, cache_dir, folds, shots, seeds, episodes, protocol, min_pixels,
             drop_novel_images, pascal_train_set, coco_split, folds_file, training_lists,
             config_file):
    """Write folds.json, train-fold{F}.npz and test-fold{F}-shot{K}-{protocol}-seed{S}.npz."""
    from cli._options import resolve
    from pipeline.cache import validate_dataset_name
    from pipeline.episode_stage import EpisodesConfig, build_episodes
    from pipeline.settings import config_dict

    cli = {"dataset": dataset, "cache_dir": cache_dir, "episodes": episodes,
           "protocol": protocol, "min_pixels": min_pixels,
           "drop_novel_images": drop_novel_images, "pascal_train_set": pascal_train_set,
           "coco_split": coco_split, "folds_file": folds_file, "training_lists": training_lists,
           "folds": _ints(folds, "--fold") or None, "shots": _ints(shots, "--shot") or None,
           "seeds": _ints(seeds, "--seed") or None}
    cfg = resolve(EpisodesConfig, cli, config_file=config_file, section="episodes")
    if cfg.dataset is None:
        raise click.UsageError("--dataset is required (or QGNET_DATASET / dataset in --config)")
    validate_dataset_name(cfg.dataset)
    if cfg.pascal_train_set == "aug" and cfg.dataset != "pascal":
        raise click.UsageError("--pascal-train-set aug applies to --dataset pascal only")
    for what, values in (("--shot", cfg.shots), ("--fold", cfg.folds or ()),
                         ("--seed", cfg.seeds or ())):
        low = 1 if what == "--shot" else 0
        bad = [v for v in values if v < low]
        if bad:
            raise click.UsageError(f"{what} must be an int >= {low}, got {bad[0]}")
    build_episodes(
        cfg.dataset, cache_dir=cfg.cache_dir, folds=cfg.folds, shots=cfg.shots,
        seeds=cfg.seeds, protocol=cfg.protocol, n_episodes=cfg.episodes,
        min_pixels=cfg.min_pixels, drop_novel_images=cfg.drop_novel_images,
        train_set=cfg.pascal_train_set, coco_split=cfg.coco_split, folds_file=cfg.folds_file,
        training_lists=cfg.training_lists, config=config_dict(cfg), echo=click.echo)
