"""Image and mask decoding shared by the readers (Pillow only, no torch).

Every reader goes through these four functions, so the rules live in one place:

* images are decoded fully inside ``try`` (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False:
  a cut-off JPEG is an :class:`ImageReadError`, never a half-grey picture);
* the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so ``load_image`` and
  ``image_size`` agree on the displayed orientation;
* grayscale, CMYK, palette, 16-bit and RGBA images become ``H x W x 3`` uint8 RGB (alpha is
  dropped, not composited);
* masks are read as indices: palette PNGs give their palette indices (never converted to
  RGB), grayscale PNGs their grey values.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipeline.errors import IGNORE, ImageReadError

log = logging.getLogger(__name__)

# EXIF orientation -> the PIL transpose that undoes it (what ImageOps.exif_transpose does).
_ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
# Pillow errors that mean "this file is broken" (truncated data raises OSError, a garbled
# header SyntaxError/ValueError, a giant header DecompressionBombError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _check_strict() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped the global; we refuse to follow
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; qgnet "
                           "needs it False so truncated images are reported, not padded")


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:  # unreadable EXIF block: treat as upright
        return 1
    return value if value in _ORIENT_TRANSPOSE else 1


def exif_orientation(path: str | Path) -> int:
    """EXIF orientation tag of ``path`` (1 = upright, also when absent); header only."""
    try:
        with Image.open(path) as im:
            return _orientation(im)
    except FileNotFoundError:
        raise ImageReadError(f"missing image {path}") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def image_size(path: str | Path, *, exif: bool = True) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`load_rgb` returns it (EXIF-rotated unless
    ``exif=False``), from the header.

    Raises
    ------
    ImageReadError
        The file is missing or its header cannot be parsed.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if exif and _orientation(im) in (5, 6, 7, 8):  # quarter turns swap the axes
                h, w = w, h
    except FileNotFoundError:
        raise ImageReadError(f"missing image {path}") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    return int(h), int(w)


def raw_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` as stored in the file, ignoring EXIF orientation (header only)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise ImageReadError(f"missing image {path}") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    return int(h), int(w)


def load_rgb(path: str | Path, *, exif: bool = True) -> np.ndarray:
    """Decode ``path`` to an ``H x W x 3`` uint8 RGB array, EXIF orientation applied
    (``exif=False``: the stored pixels as they are, as the HSNet / PATNet readers'
    ``Image.open(p).convert('RGB')`` sees them).

    Raises
    ------
    ImageReadError
        Missing, truncated or otherwise undecodable file (the message names it).
    """
    _check_strict()
    try:
        with Image.open(path) as im:
            im.load()  # decode everything now, so truncation raises here
            if exif:
                im = ImageOps.exif_transpose(im)
            arr = _to_rgb(im)
    except FileNotFoundError:
        raise ImageReadError(f"missing image {path}") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    return arr


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grayscale
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        g = np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, 1
    return np.asarray(im, dtype=np.uint8).copy()


def load_index_mask(path: str | Path, *, missing: str | None = None) -> np.ndarray:
    """Read a class-index PNG as ``H x W`` uint8 (palette indices or grey values).

    Parameters
    ----------
    path : path
        PNG with mode ``P``, ``L``, ``1`` or 16-bit grayscale holding values <= 255.
    missing : str, optional
        Message used when the file does not exist (defaults to ``"missing mask {path}"``).

    Raises
    ------
    ImageReadError
        Missing or undecodable file, or an RGB(A) mask (colours are not class ids).
    """
    _check_strict()
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "L"):
                arr = np.array(im, dtype=np.uint8)  # mode P: the palette *indices*
            elif mode == "1":
                arr = np.array(im, dtype=np.uint8)
            elif mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.array(im)
                if a.size and (a.min() < 0 or a.max() > 255):
                    raise ImageReadError(f"mask {path} holds values outside 0..255 "
                                         f"(min {a.min()}, max {a.max()})")
                arr = a.astype(np.uint8)
            else:
                raise ImageReadError(f"mask {path} has mode {mode}; expected a palette (P) or "
                                     f"grayscale (L) PNG whose values are class ids")
    except FileNotFoundError:
        raise ImageReadError(missing or f"missing mask {path}") from None
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read mask {path}: {exc}") from exc
    return arr


def load_binary_mask(path: str | Path, *, threshold: int = 128,
                     missing: str | None = None) -> np.ndarray:
    """Read an object mask as ``H x W`` uint8 0 / 1, the HSNet / PATNet way.

    The file is converted to 8-bit grey (``Image.convert("L")``: RGB, palette and 1-bit
    masks alike) and thresholded: ``>= threshold`` (128) is the object. One exception: a
    mask whose grey values are all 0 or 1 is taken as it is (0 / 1), where the reference
    readers would threshold it to an empty mask (docs/data.md, "Binary masks").

    Raises
    ------
    ImageReadError
        Missing (``missing`` or "missing mask {path}") or undecodable file.
    """
    _check_strict()
    try:
        with Image.open(path) as im:
            im.load()
            grey = np.array(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(missing or f"missing mask {path}") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read mask {path}: {exc}") from exc
    if grey.size and grey.max() <= 1:
        return grey
    return (grey >= threshold).astype(np.uint8)


def resize_nearest(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A 2-D uint8 array resized to ``hw`` (H, W) with nearest-neighbour sampling (PIL)."""
    if tuple(arr.shape[:2]) == tuple(hw):
        return arr
    return np.asarray(Image.fromarray(arr).resize((int(hw[1]), int(hw[0])),
                                                  Image.Resampling.NEAREST)).copy()


def resize_rgb(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An ``H x W x 3`` uint8 image resized to ``hw`` (bilinear with PIL's antialiasing)."""
    if tuple(arr.shape[:2]) == tuple(hw):
        return arr
    return np.asarray(Image.fromarray(arr).resize((int(hw[1]), int(hw[0])),
                                                  Image.Resampling.BILINEAR)).copy()


def fit_within(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``hw`` scaled down (aspect kept, sides rounded) so that neither side exceeds
    ``max_side``; unchanged when it fits or ``max_side`` is None.

    >>> fit_within((6000, 4000), 4096)
    (4096, 2731)
    """
    h, w = int(hw[0]), int(hw[1])
    if max_side is None or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, min(max_side, round(h * s))), max(1, min(max_side, round(w * s)))


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the transpose that EXIF ``orientation`` asks for to a 2-D uint8 array (exact)."""
    method = _ORIENT_TRANSPOSE.get(orientation)
    if method is None:
        return arr
    return np.asarray(Image.fromarray(arr).transpose(method)).copy()


def check_mask(mask: np.ndarray, num_classes: int, path: str | Path,
               image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Check a decoded mask: size equals ``image_hw`` and values lie in {0..C, 255}.

    Raises
    ------
    ImageReadError
        Naming ``path`` and the sizes, or the offending values.
    """
    if image_hw is not None and tuple(mask.shape[:2]) != tuple(image_hw):
        raise ImageReadError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its "
                             f"image is {image_hw[0]}x{image_hw[1]}")
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts) if num_classes < v != IGNORE]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ImageReadError(f"mask {path} holds values {shown} outside 0..{num_classes} and "
                             f"{IGNORE} (ignore)")
    return mask


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map: 256 x RGB, bit-interleaved from the index (255 = cream)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal
