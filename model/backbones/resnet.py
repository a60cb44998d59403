"""ResNet-18/50/101 feature stages (torchvision blocks, PFENet dilation, optional deep
stem)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from model.backbones.base import Backbone, init_weights

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
        init_weights(self)  # torchvision's init

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "layer0":
            x = self.relu(self.bn1(self.conv1(x)))  # N x 64 x H/2 x W/2
            if self.stem == "deep":
                x = self.relu(self.bn2(self.conv2(x)))  # N x 64 x H/2 x W/2
                x = self.relu(self.bn3(self.conv3(x)))  # N x 128 x H/2 x W/2
            return self.maxpool(x)  # N x C0 x H/4 x W/4
        return getattr(self, name)(x)
