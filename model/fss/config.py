"""The few-shot training configuration: every option of ``qgnet-train fss`` (:class:`FssConfig`),
the per-dataset defaults and recipes, and their resolution and validation
(:func:`finalize_config`), beside ``model/prior/config.py`` for the prior.

One field = one option: its default, bounds, choices and help live in the field's
:func:`pipeline.settings.option`; ``cli/train_fss.py`` builds the command-line flags from them
and :func:`pipeline.settings.resolve_config` reads the TOML file and the ``QGNET_*``
environment by the same names. ``None`` means "not set": the dataset's default below, or the
behaviour the help names. 0 is a value (``--val-episodes 0``: no validation).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from model.run import DEVICES, RESUMABLE_COMMON
from pipeline.settings import option

# Per-dataset defaults (PFENet's PASCAL and COCO configs; folder/demo: a small CPU setup).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "pascal": dict(backbone="resnet50", weights=None, crop=473, scale_min=0.9, scale_max=1.1,
                   batch_size=4, lr=0.0025, epochs=200),
    # the QGNet paper's COCO setting (crop 473 "due to GPU memory constraints", ResNet-50 as
    # the authors' code); PFENet's 641 / ResNet-101 is --recipe pfenet (RECIPES below)
    "coco": dict(backbone="resnet50", weights=None, crop=473, scale_min=0.8, scale_max=1.25,
                 batch_size=8, lr=0.005, epochs=50),
    "folder": dict(backbone="efficientnet_lite0", weights="imagenet", crop=161, scale_min=0.9,
                   scale_max=1.1, batch_size=4, lr=0.0025, epochs=50),
    "demo": dict(backbone="efficientnet_lite0", weights="imagenet", crop=161, scale_min=0.9,
                 scale_max=1.1, batch_size=4, lr=0.0025, epochs=20),
}

# --recipe: dataset defaults that differ from the paper's ("paper" changes nothing)
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "pfenet": {"coco": dict(backbone="resnet101", crop=641)},  # PFENet's config/coco/*.yaml
}
BACKBONES = ("resnet50", "resnet101", "vgg16", "efficientnet_lite0", "resnet18")


@dataclasses.dataclass(frozen=True)
class FssConfig:
    """Options of ``qgnet-train fss`` (``None`` = the dataset's default, see DATASET_DEFAULTS)."""

    dataset: str = option("demo", help="Dataset name (pascal, coco, folder, demo).")
    recipe: str = option("paper", choices=tuple(RECIPES), help=(
        "Dataset defaults: paper (default; COCO crop 473, ResNet-50) or pfenet (COCO crop 641, "
        "ResNet-101, as PFENet's configs); PASCAL is the same in both."))
    root: str | None = option(None, folder=True, help="Dataset root (default: the mask store's).")
    fold: int = option(0, min=0, help="Fold (default 0).")
    shot: int = option(1, min=1, what="support images per episode",
                       help="Support images per episode (default 1).")
    backbone: str | None = option(None, choices=BACKBONES, help=(
        "Feature extractor (default: resnet50 pascal/coco, efficientnet_lite0 folder/demo; "
        "--recipe pfenet: resnet101 coco)."))
    weights: str | None = option(None, help=(
        "Feature extractor weights: PATH, imagenet (efficientnet_lite0) or none."))
    prior: str | None = option(None, help=(
        "Prior extractor: prior_extractor.pt of `qgnet-train prior`, or imagenet (ImageNet "
        "EfficientNet-Lite0 as a stand-in Fp)."))
    use_prior_map: bool = option(True, flag="--prior-map/--no-prior-map", help=(
        "QGNet's prior region map (default on); --no-prior-map = PFENet baseline."))
    bins: str = option("auto", help=(
        "FEM bins: auto (60,30,15,8 at crop 473, else fractions) or a comma list."))
    epochs: int | None = option(None, min=1, help=(
        "Epochs (pascal 200, coco 50, folder 50, demo 20)."))
    batch_size: int | None = option(None, min=1, what="global batch", help=(
        "Global batch (pascal 4, coco 8, folder/demo 4)."))
    lr: float | None = option(None, gt=0, help=(
        "Base lr (pascal 0.0025, coco 0.005, folder/demo 0.0025)."))
    lr_scale: float = option(10.0, gt=0, help=(
        "Multiplier of every group's lr (default 10, PFENet's scale_lr: effective lr = lr x 10)."))
    momentum: float = option(0.9, min=0, max=1, help="SGD momentum (default 0.9).")
    weight_decay: float = option(1e-4, min=0, help="SGD weight decay (default 1e-4).")
    power: float = option(0.9, gt=0, help="Poly schedule power (default 0.9).")
    crop: int | None = option(None, min=9, what="crop side in pixels", help=(
        "Crop side (pascal 473, coco 473, folder/demo 161; --recipe pfenet: coco 641)."))
    scale_min: float | None = option(None, gt=0, help="RandScale minimum (pascal 0.9, coco 0.8).")
    scale_max: float | None = option(None, gt=0, help="RandScale maximum (pascal 1.1, coco 1.25).")
    workers: int = option(2, min=0, help="DataLoader workers (default 2).")
    threads: int | None = option(None, min=1, help=(
        "torch CPU threads (default: torch's; 1 on a shared CPU)."))
    device: str = option("auto", choices=DEVICES, help="Device (default auto).")
    amp: bool = option(True, help="bf16 autocast on CUDA (default on).")
    val_episodes: int = option(1000, min=0, help="Validation episodes (default 1000; 0 = none).")
    val_every: int | None = option(None, min=1, help=(
        "Validate every N steps (default: at the end of each epoch)."))
    val_seed: int = option(123, min=0, help=(
        "Seed of the validation episode file that picks best.pt (default 123, not the test "
        "seed; 321 reproduces PFENet)."))
    max_steps: int | None = option(None, min=1, help=(
        "Stop after this step (the schedule still spans --epochs)."))
    ckpt_every: int | None = option(None, min=1, help=(
        "Also write last.pt every N steps (default: at epoch ends only)."))
    log_every: int = option(10, min=1, help="Steps per metrics.jsonl line (default 10).")
    progress: bool = option(True, help="tqdm progress bars (default on).")
    resume: str | None = option(None, help=(
        "Continue exactly from a run dir (its last.pt) or a checkpoint; the run goes on in "
        "that folder."))
    seed: int = option(321, min=0, help="Seed (default 321).")
    out: str | None = option(None, folder=True, help=(
        "Run dir (default runs/fss/<dataset>-fold<F>-<K>shot-<backbone>-<qgnet|baseline>)."))
    cache_dir: str | None = option(None, folder=True, help="Cache root.")
    train_set: str = option("train", choices=("train", "aug"), help=(
        "PASCAL training list: train (PFENet's 5,953, default) or aug (10,582)."))
    drop_novel_images: bool = option(False, flag="--drop-novel-images/--keep-novel-images", help=(
        "BAM: drop training images holding test classes (default keep, PFENet)."))
    novel_pixels: str = option("background", choices=("background", "ignore"), help=(
        "Test-class pixels in kept training images: background (PFENet, default) or ignore "
        "(255, no loss; for scene datasets where test classes are in nearly every training "
        "image)."))
    frozen_bn: str = option("eval", choices=("eval", "reference"), help=(
        "BatchNorm of the two frozen backbones while training: eval (default; running "
        "statistics, never updated, as HSNet and BAM) or reference (PFENet's and the QGNet "
        "authors' train.py: batch statistics, running statistics drift and are saved in the "
        "checkpoint). Evaluation uses running statistics either way."))


# options that may differ between a run and its resumption (the resume rule, model.run)
RESUMABLE = RESUMABLE_COMMON | {"threads"}


def finalize_config(cfg: FssConfig, *, world: int = 1) -> FssConfig:
    """Fill the dataset defaults and check the options (ConfigError names the one that is
    wrong, its allowed range and what to pass)."""
    from model.fss.build import parse_bins
    from pipeline.cache import validate_dataset_name
    from pipeline.errors import ConfigError
    from pipeline.settings import check_config

    validate_dataset_name(cfg.dataset)  # the one check every command runs (pipeline.cache)
    d = DATASET_DEFAULTS.get(cfg.dataset, DATASET_DEFAULTS["folder"])
    d = {**d, **RECIPES.get(cfg.recipe, {}).get(cfg.dataset, {})}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in d.items() if getattr(cfg, k) is None})
    check_config(cfg, hints={k: f"the {cfg.dataset} default is {v}" for k, v in d.items()
                             if v is not None})
    if cfg.weights is None:
        raise ConfigError(f"--backbone {cfg.backbone} needs --weights PATH (a state dict, e.g. "
                          f"PFENet's initmodel/{cfg.backbone}_v2.pth), or --weights none; only "
                          f"efficientnet_lite0 has offline weights (--weights imagenet)")
    if cfg.use_prior_map and cfg.prior is None:
        raise ConfigError("QGNet needs the prior extractor: pass --prior PATH to the "
                          "prior_extractor.pt written by `qgnet-train prior`, or --no-prior-map "
                          "for the PFENet baseline (or --prior imagenet: ImageNet EfficientNet-"
                          "Lite0 as a stand-in Fp)")
    if cfg.use_prior_map and cfg.prior != "imagenet" and not Path(cfg.prior).is_file():
        raise FileNotFoundError(f"no prior extractor at {cfg.prior}; run `qgnet-train prior` "
                                f"(it writes prior_extractor.pt) or pass --no-prior-map")
    if cfg.scale_min > cfg.scale_max:
        raise ConfigError(f"--scale-min {cfg.scale_min} / --scale-max {cfg.scale_max}: need "
                          f"0 < min <= max")
    try:
        bins = parse_bins(cfg.bins, cfg.crop)
    except ValueError:
        bins = ()
    if bins is not None and (not bins or any(b <= 0 for b in bins)):
        raise ConfigError(f"--bins {cfg.bins!r}: must be auto or a comma list of positive "
                          f"numbers (sizes > 1, fractions of the feature map <= 1), e.g. "
                          f"60,30,15,8")
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide by "
                          f"the {world} processes")
    if cfg.out is None and cfg.resume is None:  # a resumed run writes where it is resumed
        tag = "qgnet" if cfg.use_prior_map else "baseline"
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / "fss" / (
            f"{cfg.dataset}-fold{cfg.fold}-{cfg.shot}shot-{cfg.backbone}-{tag}")))
    return cfg


def check_fold(dataset: str, fold: int, *, cache_dir: str | None) -> None:
    """Refuse a fold the dataset does not have (folds.json of ``qgnet-prep episodes`` says how
    many; PASCAL-5i / COCO-20i and the interleaved default have 4)."""
    import json

    from pipeline.cache import episodes_dir
    from pipeline.episodes import NUM_FOLDS
    from pipeline.errors import ConfigError

    folds_json = episodes_dir(dataset, cache_dir=cache_dir) / "folds.json"
    n = NUM_FOLDS
    if folds_json.is_file():
        n = len(json.loads(folds_json.read_text()).get("folds", [])) or NUM_FOLDS
    if not 0 <= fold < n:
        raise ConfigError(f"--fold {fold}: the dataset {dataset} has folds 0-{n - 1}"
                          + (f" ({folds_json})" if folds_json.is_file() else ""))
