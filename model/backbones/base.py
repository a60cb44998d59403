"""The stage-dict interface every backbone implements, freezing, and the shared init.

See :mod:`model.backbones` for the stage layouts of the concrete backbones.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_NAMES = ("layer0", "layer1", "layer2", "layer3", "layer4")


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
    bn_train : bool
        Set by ``freeze(..., bn_train=True)``: the BatchNorm layers of the frozen backbone
        still follow ``.train()`` / ``.eval()``.
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
        self.bn_train = False

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
        # A frozen backbone stays in eval mode; with ``freeze(..., bn_train=True)`` its
        # BatchNorm layers still follow ``mode`` (batch statistics, running stats updated).
        super().train(mode and not self.frozen)
        if self.frozen and self.bn_train:
            _set_bn_mode(self, mode)
        return self

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dilated={self.dilated}, "
            f"weights={self.weights!r}, frozen={self.frozen}"
        )


def _set_bn_mode(module: nn.Module, mode: bool) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.training = bool(mode)


def _train_kept_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    nn.Module.train(self, False)
    if getattr(self, "bn_train", False):
        _set_bn_mode(self, mode)
    return self


def freeze(module: nn.Module, *, bn_train: bool = False) -> nn.Module:
    """Freeze ``module`` in place: no gradients, eval mode, and eval mode kept.

    ``requires_grad`` is switched off for every parameter and the module is put in
    eval mode. Later ``.train()`` calls, including those a parent module forwards to
    its children, leave it in eval mode, so BatchNorm uses (and never updates) its
    running statistics (HSNet's and BAM's frozen backbones). Backbones record this in
    ``frozen``; any other module gets an instance-level ``train`` override.

    Parameters
    ----------
    module : nn.Module
        Usually a :class:`Backbone`.
    bn_train : bool, default False
        Let the BatchNorm layers follow ``.train()`` / ``.eval()`` of the parent, as
        PFENet's and the QGNet authors' ``train.py`` leave them (``model.train()``, no BN
        freeze): while training they normalise with the batch's statistics and their
        running statistics drift to the training data; everything else stays frozen and in
        eval mode, and no parameter ever receives a gradient.

    Returns
    -------
    nn.Module
        The same module, for chaining.
    """
    module.requires_grad_(False)
    for m in module.modules():
        if isinstance(m, Backbone):
            m.frozen = True
            m.bn_train = bool(bn_train)
    if not isinstance(module, Backbone):
        module.bn_train = bool(bn_train)
        module.train = types.MethodType(_train_kept_in_eval, module)  # type: ignore[method-assign]
    module.eval()
    return module


def init_weights(module: nn.Module) -> None:
    """torchvision's initialisation, in place: every ``Conv2d`` Kaiming-normal (fan_out,
    ReLU) with zero bias (when it has one), every ``BatchNorm2d`` weight 1 and bias 0.
    Modules are visited in ``module.modules()`` order, so a seeded build is reproducible."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
