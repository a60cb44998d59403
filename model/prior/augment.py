"""MoCo-v2 augmentation of one view, applied geometrically to the superpixel map as well.

The geometric part (random resized crop and horizontal flip) is drawn once per view and
applied identically to the image (bilinear, antialiased) and to its superpixel map
(nearest neighbour, so ids stay ids); the photometric part (colour jitter, grayscale,
blur) touches only the image. Two independent calls give the query and the key view.

MoCo v2's order is crop, jitter, grayscale, blur, flip; the flip commutes with the
photometric operations (the blur kernel is symmetric), so we apply crop and flip first.

Two ways to run it (``qgnet-train prior --augment-on``):

* ``cpu`` (:class:`PairedAugment`): the whole view in the DataLoader worker, float32
  normalised images out (the original path, kept as the reference);
* ``device`` (:class:`PairedCrop` here + :mod:`model.prior.device_augment`): the worker draws
  every parameter of the view from the sample's generator (the same draws in the same order
  as :class:`PairedAugment`), crops and resizes in uint8 and ships the crop, the map
  (int16) and the parameters (:data:`VIEW_PARAMS`); flip, jitter, grayscale, blur and
  normalisation then run batched on the training device. Same seed, same parameters; the
  images differ only by the uint8 rounding of the resized crop (tested).

Differences from MoCo v2's PIL pipeline (documented, small): images are resized with
torchvision's antialiased bilinear on tensors rather than PIL; the blur is torchvision's
Gaussian with kernel ``2 * ceil(3 sigma) + 1`` rather than PIL's ``GaussianBlur(radius=sigma)``
(an extended box-blur approximation of the same Gaussian).

References
----------
.. [1] Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2),
       facebookresearch/moco ``main_moco.py`` (``--aug-plus``).
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

# MoCo v2's recipe (read-only).
MOCO_V2_AUGMENT = MappingProxyType({
    "size": 224,
    "scale": (0.2, 1.0),
    "ratio": (3 / 4, 4 / 3),
    "jitter": (0.4, 0.4, 0.4, 0.1),  # brightness, contrast, saturation, hue
    "p_jitter": 0.8,
    "p_gray": 0.2,
    "blur_sigma": (0.1, 2.0),
    "p_blur": 0.5,
    "p_flip": 0.5,
    "mean": (0.485, 0.456, 0.406),  # ImageNet
    "std": (0.229, 0.224, 0.225),
})


def _uniform(a: float, b: float, g: torch.Generator | None) -> float:
    return a + (b - a) * float(torch.rand(1, generator=g))


def _coin(p: float, g: torch.Generator | None) -> bool:
    return float(torch.rand(1, generator=g)) < p


def crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's window ``(top, left, h, w)``: area fraction ~ U(scale), log aspect
    ratio ~ U(log ratio); 10 tries, then the largest centred crop within ``ratio``."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_r[0], log_r[1], generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


# Layout of the per-view parameter vector the device path ships (float32, one row per view).
VIEW_PARAMS = ("flip", "jitter", "brightness", "contrast", "saturation", "hue",
               "order0", "order1", "order2", "order3", "gray", "sigma")
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # op k of ``order``
NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # factors that leave the image unchanged


class ViewParams(NamedTuple):
    """Every random choice of one view; ``sigma == 0`` means no blur, ``jitter`` False
    means no colour jitter (factors neutral, order 0..3)."""

    crop: tuple[int, int, int, int]  # top, left, h, w in the source image
    flip: bool
    jitter: bool
    factors: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    order: tuple[int, int, int, int]  # indices into JITTER_OPS, applied left to right
    gray: bool
    sigma: float

    def vector(self) -> torch.Tensor:
        """The :data:`VIEW_PARAMS` row (12 float32)."""
        return torch.tensor([float(self.flip), float(self.jitter), *self.factors,
                             *map(float, self.order), float(self.gray), self.sigma],
                            dtype=torch.float32)


def _nearest_index(start: int, length: int, out: int) -> np.ndarray:
    """Source index of each of ``out`` output pixels (pixel centres, align_corners=False)."""
    idx = np.floor((np.arange(out) + 0.5) * (length / out)).astype(np.int64)
    return start + np.minimum(idx, length - 1)


class PairedAugment:
    """One MoCo-v2 view of an image and its superpixel map.

    Parameters
    ----------
    size : int, default 224
        Output side S.
    scale : (float, float), default (0.2, 1.0)
        Crop area fraction range.
    ratio : (float, float), default (3/4, 4/3)
    jitter : (b, c, s, h), default (0.4, 0.4, 0.4, 0.1)
        ColorJitter strengths, applied in random order with probability ``p_jitter`` (0.8).
    p_gray : float, default 0.2
    blur_sigma : (float, float), default (0.1, 2.0)
        Gaussian blur sigma range, applied with probability ``p_blur`` (0.5).
    p_flip : float, default 0.5
    photometric : bool, default True
        False: crop, flip and normalisation only (for tests and ablations).
    mean, std : ImageNet normalisation.

    Call ``aug(image, patch_map, generator=None)`` with ``image`` H x W x 3 uint8 (numpy)
    and ``patch_map`` H x W int (numpy) -> ``(3 x S x S float32, S x S int64)``.

    Examples
    --------
    >>> aug = PairedAugment(size=32)
    >>> img, pm = aug(np.zeros((40, 50, 3), np.uint8), np.ones((40, 50), np.uint16))
    >>> tuple(img.shape), tuple(pm.shape), pm.dtype
    ((3, 32, 32), (32, 32), torch.int64)
    """

    def __init__(
        self,
        size: int = MOCO_V2_AUGMENT["size"],
        scale: tuple[float, float] = MOCO_V2_AUGMENT["scale"],
        *,
        ratio: tuple[float, float] = MOCO_V2_AUGMENT["ratio"],
        jitter: tuple[float, float, float, float] = MOCO_V2_AUGMENT["jitter"],
        p_jitter: float = MOCO_V2_AUGMENT["p_jitter"],
        p_gray: float = MOCO_V2_AUGMENT["p_gray"],
        blur_sigma: tuple[float, float] = MOCO_V2_AUGMENT["blur_sigma"],
        p_blur: float = MOCO_V2_AUGMENT["p_blur"],
        p_flip: float = MOCO_V2_AUGMENT["p_flip"],
        photometric: bool = True,
        mean: tuple[float, float, float] = MOCO_V2_AUGMENT["mean"],
        std: tuple[float, float, float] = MOCO_V2_AUGMENT["std"],
    ) -> None:
        self.size = int(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.jitter = tuple(jitter)
        self.p_jitter, self.p_gray, self.p_blur, self.p_flip = p_jitter, p_gray, p_blur, p_flip
        self.blur_sigma = tuple(blur_sigma)
        self.photometric = photometric
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __repr__(self) -> str:
        return (f"PairedAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"photometric={self.photometric})")

    def draw(self, height: int, width: int, generator: torch.Generator | None = None
             ) -> ViewParams:
        """All random choices of one view of an ``height x width`` image, drawn from
        ``generator`` in a fixed order: crop, flip, [jitter coin, its four factors, their
        order], grayscale coin, blur coin, [sigma] (bracketed draws only when used)."""
        g = generator
        crop = crop_params(height, width, self.scale, self.ratio, g)
        flip = _coin(self.p_flip, g)
        jitter, factors, order, gray, sigma = False, NEUTRAL, (0, 1, 2, 3), False, 0.0
        if self.photometric:
            if _coin(self.p_jitter, g):  # ColorJitter(b, c, s, h): factors drawn, random order
                b, c, sat, hue = self.jitter
                jitter = True
                factors = (_uniform(max(0.0, 1 - b), 1 + b, g), _uniform(max(0.0, 1 - c), 1 + c, g),
                           _uniform(max(0.0, 1 - sat), 1 + sat, g), _uniform(-hue, hue, g))
                order = tuple(torch.randperm(4, generator=g).tolist())
            gray = _coin(self.p_gray, g)
            if _coin(self.p_blur, g):
                sigma = _uniform(self.blur_sigma[0], self.blur_sigma[1], g)
        return ViewParams(crop, flip, jitter, factors, order, gray, sigma)

    def _check(self, image: np.ndarray, patch_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image)
        patch_map = np.asarray(patch_map)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != patch_map.shape:
            raise ValueError(f"expected an H x W x 3 image and an H x W map of the same H x W, got "
                             f"{image.shape} and {patch_map.shape}")
        return image, patch_map

    def _map_view(self, patch_map: np.ndarray, p: ViewParams, *, flip: bool) -> np.ndarray:
        """Nearest-neighbour S x S view of the map through the crop window (and the flip)."""
        top, left, h, w = p.crop
        rows = _nearest_index(top, h, self.size)
        cols = _nearest_index(left, w, self.size)
        if flip and p.flip:
            cols = cols[::-1]
        # rows then columns: two plain gathers, ~8x cheaper than one np.ix_ fancy index
        # (the same array; issue 20 §4)
        return patch_map[rows][:, cols]  # S x S, the map's dtype

    def __call__(
        self, image: np.ndarray, patch_map: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, patch_map = self._check(image, patch_map)
        s = self.size
        p = self.draw(image.shape[0], image.shape[1], generator)
        map_t = torch.from_numpy(self._map_view(patch_map, p, flip=True).astype(np.int64))  # S x S

        # Geometry on the image: crop, antialiased bilinear resize, flip.
        top, left, h, w = p.crop
        crop = np.ascontiguousarray(image[top:top + h, left:left + w])
        img = torch.from_numpy(crop).permute(2, 0, 1).float().div_(255)  # img: 3 x h x w in [0, 1]
        img = TF.resize(img, [s, s], interpolation=InterpolationMode.BILINEAR, antialias=True)
        img = img.clamp_(0, 1)  # img: 3 x S x S
        if p.flip:
            img = img.flip(-1)

        img = photometric(img, p)
        img = (img - self.mean) / self.std
        return img.contiguous(), map_t


def photometric(img: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """Colour jitter (ops in ``p.order``), grayscale, blur of one 3 x S x S float image in
    [0, 1] with torchvision's functional ops: the reference the batched device path
    (:func:`model.prior.device_augment.photometric_batch`) is tested against."""
    if p.jitter:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for k in p.order:
            img = ops[k](img, p.factors[k])
    if p.gray:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p.sigma > 0:
        k = 2 * math.ceil(3 * p.sigma) + 1
        img = TF.gaussian_blur(img, [k, k], [p.sigma, p.sigma])
    return img


class PairedCrop(PairedAugment):
    """The worker half of the device path: one view's crop in uint8, its map and its
    parameters; flip, photometric and normalisation are left to
    :func:`model.prior.device_augment.augment_views` on the training device.

    Same options and the same random draws as :class:`PairedAugment` (so the same seed gives
    the same crop, flip, jitter, grayscale and blur). The crop is resized in uint8 with
    torch's antialiased bilinear (the float path's algorithm, rounded to uint8: at most one
    grey level apart).

    Call ``crop(image, patch_map, generator=None)`` -> ``(3 x S x S uint8, S x S int16,
    12 float32)``: the map's uint16 ids travel as int16 bits (the device reads them back with
    ``& 0xFFFF``); the row is :data:`VIEW_PARAMS`.

    Examples
    --------
    >>> crop = PairedCrop(size=32)
    >>> img, pm, prm = crop(np.zeros((40, 50, 3), np.uint8), np.ones((40, 50), np.uint16))
    >>> img.dtype, pm.dtype, tuple(prm.shape)
    (torch.uint8, torch.int16, (12,))
    """

    def __repr__(self) -> str:
        return "PairedCrop" + super().__repr__()[len("PairedAugment"):]

    def __call__(
        self, image: np.ndarray, patch_map: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, patch_map = self._check(image, patch_map)
        p = self.draw(image.shape[0], image.shape[1], generator)
        pm = self._map_view(patch_map, p, flip=False)
        if pm.dtype != np.uint16:
            if pm.size and (pm.min() < 0 or pm.max() > 0xFFFF):
                raise ValueError(f"patch ids must fit in uint16 for --augment-on device, got "
                                 f"{pm.min()}..{pm.max()}; use --augment-on cpu")
            pm = pm.astype(np.uint16)
        map_t = torch.from_numpy(pm.view(np.int16))  # S x S int16 bits of the uint16 ids

        top, left, h, w = p.crop
        crop = torch.from_numpy(image[top:top + h, left:left + w]).permute(2, 0, 1)[None]
        # crop: 1 x 3 x h x w uint8 with channels_last strides (torch's fast uint8 kernel)
        img = torch.nn.functional.interpolate(crop, size=(self.size, self.size), mode="bilinear",
                                              align_corners=False, antialias=True)
        return img[0].contiguous(), map_t, p.vector()  # 3 x S x S uint8
