"""Export the prior extractor: the key encoder's backbone of a pretraining checkpoint.

MoCo keeps two encoders; the momentum (key) encoder is the smoother one and is what we
hand to the few-shot network. The file ``prior_extractor.pt`` holds::

    {"backbone": state dict (torchvision-style keys),
     "backbone_name": "resnet50", "dilated": False,
     "config": the pretraining config (plain dict), "provenance": {...}}

and loads with ``build_backbone(name, weights="prior_extractor.pt")`` (with any
``dilated``: dilation changes strides, not weights). Its one reader is
:func:`model.backbones.weights.read_prior_export`.
"""
from __future__ import annotations

import os
from pathlib import Path

from model.utils import load_checkpoint
from pipeline.provenance import provenance


def export_prior(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the key encoder backbone of ``checkpoint`` to ``out`` and check that it loads.

    Parameters
    ----------
    checkpoint : path
        A ``checkpoints/step-*.pt`` file written by :func:`model.prior.trainer.train_prior`.
    out : path
        Target file, or a folder (then ``out/prior_extractor.pt``). Written atomically.

    Returns
    -------
    Path of the written file.
    """
    import torch

    from model.backbones import build_backbone
    from model.prior.config import EXPORT_NAME, PriorConfig, build_model
    from model.utils import save_checkpoint
    from pipeline.settings import read_saved

    ckpt = load_checkpoint(checkpoint, kind="prior")
    cfg = PriorConfig(**read_saved(PriorConfig, ckpt["config"]))  # old "unset" spellings too
    model = build_model(cfg, weights="none")  # weights come from the checkpoint
    model.load_state_dict(ckpt["model"])
    state = {k: v.detach().cpu().clone() for k, v in model.backbone_state_dict().items()}
    out = Path(out)
    if out.is_dir() or out.suffix != ".pt":
        out = out / EXPORT_NAME
    save_checkpoint(out, {"backbone": state, "backbone_name": cfg.backbone, "dilated": False,
                          "config": ckpt["config"], "step": int(ckpt["step"]),
                          "provenance": provenance({"checkpoint": str(checkpoint),
                                                    "step": int(ckpt["step"])})},
                    kind="prior_export")
    bb = build_backbone(cfg.backbone, weights=str(out), dilated=False)  # it must load
    for k, v in bb.state_dict().items():
        if k in state and not torch.equal(v, state[k]):
            raise RuntimeError(f"exported weights of {k} do not load back from {out}")
    return out
