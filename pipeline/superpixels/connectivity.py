"""Connectivity enforcement for label images (numba kernels).

Every superpixel backend ends here, so every label map this package returns has the
same contract: labels ``0 .. n-1`` (the public functions add 1), each label one
4-connected region, labels numbered in raster order of their first pixel.

The merge rule is the one of Achanta et al. (2012), ``EnforceLabelConnectivity``:
scan the image in raster order; each pixel not yet visited starts a new 4-connected
component (a flood fill over pixels with the same input label); a component smaller
than ``min_size`` pixels is given the label of the already-visited component that
touches its first pixel (left neighbour, else the one above), so it stays connected.
The very first component has no visited neighbour and is always kept.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _connected_relabel(flat, height, width, min_size):
    """flat: (H*W,) int32 input labels -> ((H*W,) int32 labels 0..n-1, n)."""
    npix = height * width
    out = np.empty(npix, np.int32)
    queue = np.empty(npix, np.int32)  # pixels of the component being filled
    return out, _connected_relabel_into(flat, height, width, min_size, out, queue)


@njit(nogil=True, cache=True)
def _connected_relabel_into(flat, height, width, min_size, out, queue):
    """``_connected_relabel`` writing into out (H*W,) int32, with queue (H*W,) int32 as
    scratch (callers that keep work arrays between images); returns n."""
    npix = height * width
    out[:npix] = -1
    n = 0
    for start in range(npix):
        if out[start] >= 0:
            continue
        value = flat[start]
        y0 = start // width
        x0 = start - y0 * width
        adjacent = -1  # a visited component touching the first pixel
        if x0 > 0:
            adjacent = out[start - 1]
        elif y0 > 0:
            adjacent = out[start - width]
        out[start] = n
        queue[0] = start
        head = 0
        tail = 1
        while head < tail:
            p = queue[head]
            head += 1
            py = p // width
            px = p - py * width
            if px > 0:
                q = p - 1
                if out[q] < 0 and flat[q] == value:
                    out[q] = n
                    queue[tail] = q
                    tail += 1
            if px < width - 1:
                q = p + 1
                if out[q] < 0 and flat[q] == value:
                    out[q] = n
                    queue[tail] = q
                    tail += 1
            if py > 0:
                q = p - width
                if out[q] < 0 and flat[q] == value:
                    out[q] = n
                    queue[tail] = q
                    tail += 1
            if py < height - 1:
                q = p + width
                if out[q] < 0 and flat[q] == value:
                    out[q] = n
                    queue[tail] = q
                    tail += 1
        if tail < min_size and adjacent >= 0:
            for i in range(tail):
                out[queue[i]] = adjacent
        else:
            n += 1
    return n


def _as_int32(labels: np.ndarray) -> np.ndarray:
    """Any integer label map -> C-contiguous int32 with the same partition; int16, uint16,
    uint8 and int32 maps are passed through as they are (the kernel compares values only,
    and is compiled for each of these types), which saves two scans and a copy per image
    for fast-slic's int16 output."""
    labels = np.asarray(labels)
    if labels.dtype in (np.int32, np.int16, np.uint16, np.uint8):
        return np.ascontiguousarray(labels)
    if labels.size and labels.dtype.kind in "iub" and labels.min() >= -(2**31) and labels.max() < 2**31:
        return np.ascontiguousarray(labels, dtype=np.int32)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


def enforce_connectivity(labels: np.ndarray, *, min_size: int = 0) -> tuple[np.ndarray, int]:
    """Relabel 4-connected components, merging those below ``min_size`` pixels.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Any label map; only equality of neighbouring values matters.
    min_size : int
        Components with fewer pixels are merged into the visited component that
        touches their first raster-order pixel. 0 keeps every component.

    Returns
    -------
    out : (H, W) int32 ndarray
        Labels ``0 .. n-1`` in raster order of first pixel, each one 4-connected region.
    n : int
        Number of labels.
    """
    lab = _as_int32(labels)
    if lab.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {lab.shape}")
    height, width = lab.shape
    out, n = _connected_relabel(lab.ravel(), height, width, int(min_size))
    return out.reshape(height, width), int(n)


def count_components(labels: np.ndarray) -> int:
    """Number of 4-connected components of equal value in ``labels``."""
    return enforce_connectivity(labels, min_size=0)[1]


def finalize(labels0: np.ndarray, n: int) -> np.ndarray:
    """Labels 0..n-1 (int32) -> labels 1..n as uint16, or int32 when n > 65535."""
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.int32
    return np.add(labels0, 1, out=np.empty(labels0.shape, dtype), casting="unsafe")  # one pass
