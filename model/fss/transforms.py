"""PFENet's episode augmentation on numpy arrays (no OpenCV needed).

Training, applied to every image of an episode independently (PFENet ``train.py``, built
from ``util/transform.py``), in this order::

    binarise     label: chosen class -> 1, 255 kept, everything else -> 0
    RandScale    one factor s ~ U(scale_min, scale_max) for both axes; image bilinear,
                 label nearest                                   (PASCAL 0.9-1.1, COCO 0.8-1.25)
    RandRotate   p 0.5, angle ~ U(-10, 10) degrees about the image centre; image border =
                 ImageNet mean (in 0..255), label border 255
    GaussianBlur p 0.5, 5 x 5 kernel, sigma from the size (OpenCV's fixed 1-4-6-4-1 / 16)
    HFlip        p 0.5
    Crop         pad to at least crop x crop (image: mean, label: 255, split evenly), random
                 crop; re-drawn up to 31 times (PFENet: ``while pos < 0.85 * raw_pos and
                 cnt <= 30``) while it keeps < 85% of the foreground pixels; the last draw
                 is used even if it still fails
    Normalise    (x - 255 * mean) / (255 * std), HWC -> CHW float32

Test time (PFENet ``test.py`` with the configs' ``resized_val: True``, i.e.
``util/transform.py`` ``Resize``; the same for the query and every support): the longer side
is *always* scaled to ``size`` (up or down), the shorter to ``int(side * size / longer)``,
and both are floored to a multiple of 8 (PFENet's ``find_new_hw``: 500 x 375 at 473 ->
352 x 472). The result is placed at the top-left of a ``size x size`` canvas (image pad 0
*before* normalisation, as PFENet's ``back_crop = np.zeros`` ahead of ``Normalize``; label
pad 255). The original label is kept for scoring: :func:`model.fss.metrics.upsample_logits`
maps the canvas back with the exact inverse of this resize (see docs/fss.md "Test-time
resize and scoring"). PFENet's ``test_Resize`` (only used when ``resized_val`` is False)
leaves small images unscaled; it is not the protocol and is not implemented.
HSNet's test-time resize (a 400 x 400 square, aspect not kept, Pillow bilinear) is
:func:`hsnet_transform`, for ``qgnet-eval fss --scoring hsnet``.

OpenCV conventions reproduced: bilinear resizing with half-pixel centres, nearest
neighbour as ``floor(dst * in / out)``, rotation matrix of ``getRotationMatrix2D`` (a
positive angle turns the picture counter-clockwise), ``BORDER_REFLECT_101`` for the blur.
Random numbers come from a ``numpy.random.Generator`` passed in (PFENet uses Python's
global ``random``), so an episode is reproducible from its seed alone.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from model.fss.canvas import TEST_MULTIPLE, test_size  # noqa: F401 - the test canvas, re-exported

IGNORE = 255
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255  # ImageNet, 0..255 scale
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
MIN_KEEP = 0.85  # PFENet's crop keeps >= 85% of the foreground pixels
CROP_RETRIES = 30  # PFENet: ``crop_cnt <= 30`` -> up to 31 re-draws after the first
BLUR_KERNEL = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16  # cv2 ksize 5, sigma 0


# ---------------------------------------------------------------------------- labels
def binarize(mask: np.ndarray, cls: int) -> np.ndarray:
    """Episode label: pixels of ``cls`` -> 1, 255 kept, every other class -> 0 (uint8).

    >>> binarize(np.array([[3, 5], [255, 0]], np.uint8), 5).tolist()
    [[0, 1], [255, 0]]
    """
    mask = np.asarray(mask)
    out = (mask == cls).astype(np.uint8)
    out[mask == IGNORE] = IGNORE
    return out


# ---------------------------------------------------------------------------- resizing
def _src_coords(n_out: int, n_in: int, fx: float | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR source indices and weights along one axis (half-pixel centres).

    ``fx``: OpenCV's ``inv_scale`` (output pixels per source pixel): ``cv2.resize(fx=s)``
    passes s; with a ``dsize`` OpenCV sets it to ``n_out / n_in``. The source coordinate is
    ``(dx + 0.5) * (1 / fx) - 0.5``, rounded to float32 before the floor, as in
    ``cv::resize``; outside ``[0, n_in - 1]`` it is clamped (weight 0 on the edge pixel).
    """
    fx = n_out / n_in if fx is None else float(fx)
    x = ((np.arange(n_out, dtype=np.float64) + 0.5) * (1.0 / fx) - 0.5).astype(np.float32)
    x = np.clip(x, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: tuple[int, int], *, factor: float | None = None
                    ) -> np.ndarray:
    """Bilinear resize of an H x W (x C) array to ``size`` = (h, w); float32 out
    (``cv2.resize(..., dsize=(w, h), interpolation=INTER_LINEAR)`` on float32 input).

    ``factor``: the size came from ``cv2.resize(fx=factor, fy=factor)`` (RandScale), which
    samples the source every ``1 / factor`` pixels, not every ``H / h``.
    """
    h, w = int(size[0]), int(size[1])
    img = np.asarray(image, dtype=np.float32)
    if img.shape[:2] == (h, w):  # cv::resize copies when the sizes agree, whatever fx
        return img.copy()
    y0, y1, wy = _src_coords(h, img.shape[0], factor)
    x0, x1, wx = _src_coords(w, img.shape[1], factor)
    extra = (None,) * (img.ndim - 2)
    wy = wy[(slice(None), None) + extra]  # h x 1 (x 1)
    wx = wx[(slice(None),) + extra]  # w (x 1)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx  # h x w (x C)
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def resize_nearest(label: np.ndarray, size: tuple[int, int], *, factor: float | None = None
                   ) -> np.ndarray:
    """Nearest-neighbour resize as OpenCV's INTER_NEAREST: ``src = floor(dst * (1 / fx))``
    with ``fx = out / in`` (or ``factor``, as ``cv2.resize(fx=factor)``), clamped to the
    last pixel. ``1 / (out / in)`` is not always ``in / out`` in floating point; OpenCV
    computes the former, and so does this."""
    h, w = int(size[0]), int(size[1])
    label = np.asarray(label)
    if label.shape[:2] == (h, w):  # cv::resize copies when the sizes agree, whatever fx
        return label.copy()
    fy = h / label.shape[0] if factor is None else float(factor)
    fx = w / label.shape[1] if factor is None else float(factor)
    ys = np.minimum(np.floor(np.arange(h) * (1.0 / fy)).astype(np.int64), label.shape[0] - 1)
    xs = np.minimum(np.floor(np.arange(w) * (1.0 / fx)).astype(np.int64), label.shape[1] - 1)
    return label[ys][:, xs]


# ---------------------------------------------------------------------------- random ops
def rand_scale(image, label, rng: np.random.Generator, *, scale=(0.9, 1.1)):
    """RandScale: ``cv2.resize(img, None, fx=s, fy=s)``, one factor s for both axes.

    As OpenCV: the output side is ``round(side * s)`` (``saturate_cast<int>``, half to
    even like Python's ``round``) and the source is sampled every ``1 / s`` pixels, not at
    the rounded size ratio (which would differ by up to ``0.5 / s`` pixels at the far edge).
    """
    s = scale[0] + (scale[1] - scale[0]) * rng.random()
    h, w = label.shape
    size = (max(int(round(h * s)), 1), max(int(round(w * s)), 1))
    return resize_bilinear(image, size, factor=s), resize_nearest(label, size, factor=s)


def rotation_matrix(angle: float, h: int, w: int) -> np.ndarray:
    """2 x 3 forward matrix of ``cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)``."""
    a, b = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    cx, cy = w / 2, h / 2
    return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]])


def rotate(image: np.ndarray, label: np.ndarray, angle: float, *, pad=MEAN,
           ignore: int = IGNORE) -> tuple[np.ndarray, np.ndarray]:
    """Rotate image (bilinear, border ``pad``) and label (nearest, border ``ignore``) by
    ``angle`` degrees about the centre, keeping the size (``cv2.warpAffine`` semantics).

    The image goes through ``torch.nn.functional.grid_sample`` (all channels in one call,
    the border value as ``pad + sample(image - pad)`` with zero padding), the label through
    Pillow's nearest-neighbour affine warp: ~5x faster than the
    ``scipy.ndimage.map_coordinates`` version this replaced (31 of PFENet's ~35 ms per
    image, issue 13 §7; docs/benchmarks.md, fss, "the rotation"). Same sampling grid;
    results differ only where a bilinear sample straddles the image edge and where a
    nearest source lies exactly half-way between pixels (tests/model/fss/test_transforms.py
    compares the two).
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    h, w = label.shape
    m = rotation_matrix(angle, h, w)
    inv = np.vstack([np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2], [0, 0, 1]])  # dst -> src
    # pixel (centres at integers) -> grid_sample's [-1, 1] coordinates (align_corners=False)
    norm = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    theta = torch.from_numpy((norm @ inv @ np.linalg.inv(norm))[:2]).float()[None]  # 1 x 2 x 3
    img = np.asarray(image, dtype=np.float32)
    fill = torch.from_numpy(np.asarray(pad, dtype=np.float32)).view(1, -1, 1, 1)  # 1 x C x 1 x 1
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None] - fill  # 1 x C x H x W
    grid = F.affine_grid(theta, [1, x.shape[1], h, w], align_corners=False)  # 1 x H x W x 2
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = (out + fill)[0].permute(1, 2, 0).contiguous().numpy()  # H x W x C float32
    # Pillow samples source (a, b) . (x + 0.5, y + 0.5) + c in coordinates whose pixel
    # centres sit at +0.5: shift the translation so both conventions name the same points.
    a, b, c = inv[0]
    d, e, f = inv[1]
    coeffs = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    lab = np.asarray(label)
    if lab.dtype == np.uint8:
        lab = np.asarray(Image.fromarray(lab, mode="L").transform(
            (w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.NEAREST,
            fillcolor=int(ignore))).copy()
    else:  # other label types: nearest by hand
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]  # H x W source x
        sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
        ny, nx = np.floor(sy + 0.5).astype(np.int64), np.floor(sx + 0.5).astype(np.int64)
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        out_lab = np.full((h, w), ignore, dtype=lab.dtype)
        out_lab[inside] = lab[ny[inside], nx[inside]]
        lab = out_lab
    return out, lab


def rand_rotate(image, label, rng: np.random.Generator, *, degrees=(-10.0, 10.0), p=0.5):
    if rng.random() < p:
        angle = degrees[0] + (degrees[1] - degrees[0]) * rng.random()
        return rotate(image, label, angle)
    return image, label


def gaussian_blur(image: np.ndarray) -> np.ndarray:
    """5 x 5 Gaussian blur (OpenCV ``GaussianBlur(img, (5, 5), 0)``, reflect-101 border)."""
    out = ndimage.correlate1d(np.asarray(image, np.float32), BLUR_KERNEL, axis=0, mode="mirror")
    return ndimage.correlate1d(out, BLUR_KERNEL, axis=1, mode="mirror")


def rand_blur(image, rng: np.random.Generator, *, p=0.5):
    return gaussian_blur(image) if rng.random() < p else image


def rand_hflip(image, label, rng: np.random.Generator, *, p=0.5):
    if rng.random() < p:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def pad_to(image, label, size: int, *, pad=MEAN, ignore: int = IGNORE):
    """Pad (split evenly, the extra pixel after) to at least ``size x size``."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    t, left = ph // 2, pw // 2
    img = np.empty((h + ph, w + pw, image.shape[2]), dtype=np.float32)
    img[:] = np.asarray(pad, np.float32)
    img[t:t + h, left:left + w] = image
    lab = np.full((h + ph, w + pw), ignore, dtype=label.dtype)
    lab[t:t + h, left:left + w] = label
    return img, lab


def rand_crop(image, label, rng: np.random.Generator, *, size: int, min_keep: float = MIN_KEEP,
              retries: int = CROP_RETRIES):
    """Pad, then a random ``size x size`` crop, re-drawn (at most ``retries + 1`` times)
    while it holds fewer than ``min_keep`` of the padded label's foreground (label == 1)."""
    image, label = pad_to(image, label, size)
    h, w = label.shape
    total = int((label == 1).sum())

    def draw():
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        return y, x

    y, x = draw()
    count = 0
    while (label[y:y + size, x:x + size] == 1).sum() < min_keep * total and count <= retries:
        y, x = draw()
        count += 1
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def normalize(image: np.ndarray) -> np.ndarray:
    """(x - mean) / std with ImageNet statistics on 0..255 values; H x W x 3 -> 3 x H x W."""
    x = (np.asarray(image, np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# ---------------------------------------------------------------------------- pipelines
def train_transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                    crop: int, scale=(0.9, 1.1)) -> tuple[np.ndarray, np.ndarray]:
    """PFENet's training augmentation.

    Parameters
    ----------
    image : H x W x 3 uint8 (RGB)
    label : H x W uint8, already binarised (0 / 1 / 255)
    rng : numpy Generator
    crop : int
        Output side (473 PASCAL, 641 COCO).
    scale : (float, float)
        RandScale range.

    Returns
    -------
    image : 3 x crop x crop float32 (normalised), label : crop x crop uint8 (0 / 1 / 255)
    """
    img = np.asarray(image, np.float32)
    lab = np.asarray(label, np.uint8)
    img, lab = rand_scale(img, lab, rng, scale=scale)
    img, lab = rand_rotate(img, lab, rng)
    img = rand_blur(img, rng)
    img, lab = rand_hflip(img, lab, rng)
    img, lab = rand_crop(img, lab, rng, size=crop)
    return normalize(img), np.ascontiguousarray(lab)




def test_transform(image: np.ndarray, label: np.ndarray, *, size: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The one test-time resize and pad (PFENet ``Resize``), then normalisation.

    Used for queries and supports by ``qgnet-eval fss / regions / show`` and by validation
    during training; :func:`model.fss.metrics.upsample_logits` is its inverse for scoring.

    Parameters
    ----------
    image : H x W x 3 uint8 (RGB)
    label : H x W uint8 (0 / 1 / 255)
    size : int
        The canvas side (the training crop).

    Returns
    -------
    image : 3 x size x size float32; label : size x size uint8 (255 outside the image block
    of :func:`test_size`)
    """
    h, w = label.shape
    nh, nw = test_size(h, w, size)
    canvas = np.zeros((size, size, 3), np.float32)  # pad 0 before normalising (PFENet)
    canvas[:nh, :nw] = resize_bilinear(image, (nh, nw))
    lab = np.full((size, size), IGNORE, np.uint8)
    lab[:nh, :nw] = resize_nearest(label, (nh, nw))
    return normalize(canvas), lab


HSNET_SIZE = 400  # HSNet test.py: FSSDataset.initialize(img_size=400, ...)


def hsnet_transform(image: np.ndarray, label: np.ndarray, *, size: int = HSNET_SIZE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """HSNet's test-time resize (``data/dataset.py``, ``data/pascal.py``): a square, the
    aspect ratio not kept; the same for the query and every support.

    - image: torchvision ``transforms.Resize((size, size))`` on the PIL image, i.e. Pillow's
      bilinear filter (which widens its support when it shrinks: antialiased), then
      ``ToTensor`` + ``Normalize`` (ImageNet statistics, as :func:`normalize`);
    - label: ``F.interpolate(mask[None, None].float(), (size, size), mode="nearest")``
      (PyTorch's nearest rule, ``src = floor(dst * in / out)`` in float32), which HSNet
      applies to the query label unless ``use_original_imgsize`` and to every support mask.

    Parameters
    ----------
    image : H x W x 3 uint8 (RGB)
    label : H x W uint8 (0 / 1 / 255)
    size : int, default 400

    Returns
    -------
    image : 3 x size x size float32; label : size x size uint8
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    size = int(size)
    img = Image.fromarray(np.ascontiguousarray(np.asarray(image, np.uint8)))  # H x W x 3: RGB
    img = np.asarray(img.resize((size, size), resample=Image.Resampling.BILINEAR), np.float32)
    lab = torch.from_numpy(np.asarray(label, np.float32))[None, None]  # 1 x 1 x H x W
    lab = F.interpolate(lab, size=(size, size), mode="nearest")[0, 0].numpy().astype(np.uint8)
    return normalize(img), lab


def denormalize(image: np.ndarray) -> np.ndarray:
    """3 x H x W normalised -> H x W x 3 uint8 (for figures)."""
    x = np.asarray(image, np.float32).transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
