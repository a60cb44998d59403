"""VGG-16 with BatchNorm, split into PFENet's five stages."""

from __future__ import annotations

import torch
from torch import nn

from model.backbones.base import Backbone, init_weights

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
        init_weights(self)  # torchvision's init

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        start, stop = self._slices[name]
        for i in range(start, stop):
            x = self.features[i](x)
        return x
