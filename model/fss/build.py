"""Few-shot model construction: options -> network, checkpoint -> network, and the step.

``model_meta`` records what a checkpoint needs to rebuild the network (backbone names,
weights, prior extractor, bins, crop, the frozen backbones' BatchNorm mode); ``build_model``
rebuilds it (frozen backbones loaded from their weights, so checkpoints hold only
``trainable_state``: the trained layers, plus the frozen backbones' BatchNorm running
statistics under ``frozen_bn="reference"``, where training changes them); ``load_model``
does both for a ``qgnet-train fss`` checkpoint. ``step`` is the one forward/loss(/backward) shared by
training (model.fss.trainer) and evaluation (model.fss.evaluate.run_episodes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

TRAINABLE_PREFIXES = ("backbone.", "prior_backbone.")  # (the frozen backbones' prefixes)
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")  # what training mode changes


# ---------------------------------------------------------------------------- model I/O
def parse_bins(bins: str, crop: int):
    """The ``bins`` option (a string) -> the ``pyramid_bins`` spec of :class:`model.fss.qgnet.QGNet`.

    ``"auto"``: PFENet's absolute bins (60, 30, 15, 8) at crop 473, else ``None`` (QGNet
    then uses the fractions (1, .5, .25, .125) of the feature size at the training crop);
    or a comma list, values > 1 as ints. :func:`model.fss.qgnet.resolve_bins` turns a spec into
    bin sizes for one feature map."""
    if bins == "auto":
        return (60, 30, 15, 8) if int(crop) == 473 else None
    vals = tuple(float(b) for b in str(bins).split(","))
    return tuple(int(v) if v > 1 else v for v in vals)


def prior_backbone_name(prior: str) -> str:
    """Backbone name recorded in a prior export (``imagenet`` -> efficientnet_lite0)."""
    if prior == "imagenet":
        return "efficientnet_lite0"
    path = Path(prior)
    if not path.is_file():
        raise FileNotFoundError(f"no prior extractor at {path}; train one with `qgnet-train prior` "
                                f"(it writes prior_extractor.pt into its run dir), or pass "
                                f"--no-prior-map for the PFENet baseline")
    from model.backbones.weights import read_prior_export

    return str(read_prior_export(path)["backbone_name"])


def model_meta(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the network without other options."""
    use_prior = bool(cfg["use_prior_map"])
    return {"backbone": cfg["backbone"], "weights": str(cfg["weights"]),
            "use_prior_map": use_prior, "prior": str(cfg["prior"]) if use_prior else "",
            "prior_backbone": prior_backbone_name(str(cfg["prior"])) if use_prior else "",
            "bins": cfg.get("bins", "auto"), "crop": int(cfg["crop"]),
            "reduce_dim": int(cfg.get("reduce_dim", 256)),
            "frozen_bn": cfg.get("frozen_bn") or "eval"}


def build_model(meta: Mapping[str, Any], *, stems: Mapping[str, str] | None = None):
    """A :class:`model.fss.qgnet.QGNet` from :func:`model_meta` (frozen backbones loaded).

    ``stems`` (``{"backbone": ..., "prior_backbone": ...}``, ResNet stems): build both
    backbones from random init with these stems instead of loading the files the meta names;
    the caller loads every weight itself (a :mod:`model.predict` bundle).
    """
    from model.backbones import build_backbone
    from model.fss.qgnet import QGNet

    def backbone(key: str, weights: str):
        if stems is None:
            return build_backbone(meta[key], weights=weights, dilated=True)
        return build_backbone(meta[key], weights="none", dilated=True,
                              stem=stems.get(key, "standard"))

    bb = backbone("backbone", meta["weights"])
    prior_bb = backbone("prior_backbone", meta["prior"]) if meta["use_prior_map"] else None
    bins = parse_bins(meta.get("bins", "auto"), meta["crop"])
    return QGNet(backbone=bb, prior_backbone=prior_bb, use_prior_map=meta["use_prior_map"],
                 reduce_dim=int(meta.get("reduce_dim", 256)), pyramid_bins=bins,
                 train_size=int(meta["crop"]) if bins is None else None,
                 frozen_bn=meta.get("frozen_bn", "eval"))  # checkpoints before issue 18: eval


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the state dict without the frozen backbones (they are rebuilt
    from their weights), except, under ``frozen_bn="reference"``, their BatchNorm running
    statistics (:data:`BN_STATS`), which training changes."""
    keep_stats = getattr(model, "frozen_bn", "eval") == "reference"
    return {k: v for k, v in model.state_dict().items()
            if not k.startswith(TRAINABLE_PREFIXES)
            or (keep_stats and k.rsplit(".", 1)[-1] in BN_STATS)}


def load_model(checkpoint: str | Path, *, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint dict) from a ``qgnet-train fss`` checkpoint."""
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, kind="fss")  # CheckpointError names the file
    model = build_model(ckpt["model_meta"])
    expected = set(trainable_state(model))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    missing = [k for k in missing if k in expected]
    if missing or unexpected:
        from pipeline.errors import CheckpointError

        raise CheckpointError(f"{checkpoint} does not fit the network it describes: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.to(device).eval(), ckpt


# ---------------------------------------------------------------------------- the step
def step(model, batch: dict[str, torch.Tensor], *, device: torch.device, amp: bool = True,
         optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """One numbered step, shared by training and validation.

    1. move the batch to the device;
    2. forward (logits N x 2 x S x S, auxiliary logits, both region maps);
    3. loss = CE(main) + 1.0 x mean CE(aux), 255 ignored (``label``, S x S);
    4. training only (``optimizer`` given): backward and SGD step.
    """
    from model.fss.qgnet import QGNet
    from model.utils import autocast

    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # 1
    with autocast(device, enabled=amp):
        out = model(b["query"], b["supports"], b["support_masks"], return_maps=True)  # 2
    total, main, aux = QGNet.loss(out["logits"], out["aux"], b["label"], return_parts=True)  # 3
    if optimizer is not None:  # 4
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return {"loss": total.detach(), "main": main.detach(), "aux": aux.detach(), "out": out,
            "batch": b}
