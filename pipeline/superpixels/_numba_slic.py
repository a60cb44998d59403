"""SLIC (Achanta et al. 2012) as numba kernels: sRGB -> CIELAB, seeds, k-means iterations.

All kernels are ``@njit(nogil=True, cache=True)``: they release the GIL, so several
images can be segmented at once from Dask's threaded scheduler, and the machine code is
cached next to this file after the first call.

Shapes: image (H, W, 3) uint8; lab (3, H, W) float32 planes (planar so the inner
assignment loop reads contiguous memory); centres (K, 5) float64 rows (L, a, b, y, x).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# sRGB (IEC 61966-2-1) -> linear RGB for the 256 uint8 codes.
_c = np.arange(256, dtype=np.float64) / 255.0
SRGB_TO_LINEAR = np.where(_c > 0.04045, ((_c + 0.055) / 1.055) ** 2.4, _c / 12.92)
del _c

# Residual error threshold (mean centre movement in pixels) that ends the iterations
# early; the paper leaves the value open and notes 10 iterations suffice for most images.
RESIDUAL_TOL = 0.25


@njit(nogil=True, cache=True, inline="always")
def _lab_f(t):
    # CIE f(t): cube root above (6/29)^3, linear below (the constants skimage uses).
    # For t in (0.008856, 1.0] (all uint8 colours) the cube root is three Halley steps
    # from a two-piece linear guess: exact to 1e-15 and ~3x faster than libm cbrt here.
    if t <= 0.008856:
        return 7.787 * t + 16.0 / 116.0
    y = 0.3 + 0.7 * t if t > 0.1 else 0.2 + 2.0 * t
    for _ in range(3):
        y3 = y * y * y
        y = y * (y3 + 2.0 * t) / (2.0 * y3 + t)
    return y


@njit(nogil=True, cache=True)
def rgb_to_lab(image, lut):
    """(H, W, 3) uint8 sRGB -> (3, H, W) float32 CIELAB, D65 white, 2 degree observer."""
    height, width = image.shape[0], image.shape[1]
    lab = np.empty((3, height, width), np.float32)
    for y in range(height):
        for x in range(width):
            r = lut[image[y, x, 0]]
            g = lut[image[y, x, 1]]
            b = lut[image[y, x, 2]]
            # linear RGB -> XYZ, divided by the D65 white point (0.95047, 1, 1.08883)
            fx = _lab_f((0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047)
            fy = _lab_f(0.212671 * r + 0.715160 * g + 0.072169 * b)
            fz = _lab_f((0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883)
            lab[0, y, x] = 116.0 * fy - 16.0
            lab[1, y, x] = 500.0 * (fx - fy)
            lab[2, y, x] = 200.0 * (fy - fz)
    return lab


@njit(nogil=True, cache=True, inline="always")
def _gradient(lab, y, x):
    # ||I(y, x+1) - I(y, x-1)||^2 + ||I(y+1, x) - I(y-1, x)||^2, borders clamped
    height, width = lab.shape[1], lab.shape[2]
    xm = max(x - 1, 0)
    xp = min(x + 1, width - 1)
    ym = max(y - 1, 0)
    yp = min(y + 1, height - 1)
    g = 0.0
    for c in range(3):
        dx = lab[c, y, xp] - lab[c, y, xm]
        dy = lab[c, yp, x] - lab[c, ym, x]
        g += dx * dx + dy * dy
    return g


@njit(nogil=True, cache=True)
def grid_seeds(lab, n_segments):
    """Seeds on a regular grid of step S = sqrt(N / n_segments), each moved to the lowest
    gradient position of its 3x3 neighbourhood. Returns ((K, 5) centres, S)."""
    height, width = lab.shape[1], lab.shape[2]
    step = math.sqrt(height * width / n_segments)
    ny = max(1, int(math.floor(height / step + 0.5)))
    nx = max(1, int(math.floor(width / step + 0.5)))
    centres = np.empty((ny * nx, 5), np.float64)
    k = 0
    for i in range(ny):
        y = int((i + 0.5) * height / ny)
        for j in range(nx):
            x = int((j + 0.5) * width / nx)
            by, bx = y, x
            best = _gradient(lab, y, x)
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < height and 0 <= xx < width:
                        g = _gradient(lab, yy, xx)
                        if g < best:  # strict: ties keep the grid position
                            best, by, bx = g, yy, xx
            for c in range(3):
                centres[k, c] = lab[c, by, bx]
            centres[k, 3] = by
            centres[k, 4] = bx
            k += 1
    return centres, step


@njit(nogil=True, cache=True, fastmath=True)
def slic_iterate(lab, centres, step, compactness, max_iter, tol):
    """Local k-means. Each centre claims the pixels of its 2S x 2S window where
    D^2 = d_lab^2 + (d_xy / S)^2 m^2 is lowest; centres move to the mean (L, a, b, y, x)
    of their pixels; stop when the mean centre movement (residual error E, pixels) is
    below ``tol`` or after ``max_iter`` rounds. Returns ((H, W) int32 labels, -1 where no
    window reached; residual per round, (max_iter,) float64, NaN after the last round).
    ``centres`` is updated in place."""
    height, width = lab.shape[1], lab.shape[2]
    n_centres = centres.shape[0]
    labels = np.full((height, width), -1, np.int32)
    dist = np.empty((height, width), np.float32)
    w_xy = np.float32((compactness / step) ** 2)  # m^2 / S^2
    win = 2 * int(step) + 3  # widest window row
    dx2 = np.empty(win, np.float32)  # (d_x / S)^2 m^2 along the window row
    drow_new = np.empty(win, np.float32)  # D^2 of one window row
    sums = np.zeros((n_centres, 5), np.float64)
    counts = np.zeros(n_centres, np.int64)
    residuals = np.full(max_iter, np.nan)
    for it in range(max_iter):
        dist[:] = np.inf
        for k in range(n_centres):
            cl = np.float32(centres[k, 0])
            ca = np.float32(centres[k, 1])
            cb = np.float32(centres[k, 2])
            cy = centres[k, 3]
            cx = centres[k, 4]
            y0 = max(0, int(math.ceil(cy - step)))
            y1 = min(height - 1, int(math.floor(cy + step)))
            x0 = max(0, int(math.ceil(cx - step)))
            x1 = min(width - 1, int(math.floor(cx + step)))
            nw = x1 - x0 + 1
            for i in range(nw):
                dx = np.float32(x0 + i - cx)
                dx2[i] = dx * dx * w_xy
            for y in range(y0, y1 + 1):
                dy = np.float32(y - cy)
                d_y = dy * dy * w_xy
                lrow = lab[0, y, x0:x1 + 1]
                arow = lab[1, y, x0:x1 + 1]
                brow = lab[2, y, x0:x1 + 1]
                # two passes: the first has no stores that may alias, so it vectorises
                for i in range(nw):
                    dl = lrow[i] - cl
                    da = arow[i] - ca
                    db = brow[i] - cb
                    drow_new[i] = dl * dl + da * da + db * db + d_y + dx2[i]
                drow = dist[y, x0:x1 + 1]
                labrow = labels[y, x0:x1 + 1]
                for i in range(nw):
                    if drow_new[i] < drow[i]:
                        drow[i] = drow_new[i]
                        labrow[i] = k
        # centre update: mean colour and position of the assigned pixels
        sums[:] = 0.0
        counts[:] = 0
        for y in range(height):
            for x in range(width):
                k = labels[y, x]
                if k >= 0:
                    sums[k, 0] += lab[0, y, x]
                    sums[k, 1] += lab[1, y, x]
                    sums[k, 2] += lab[2, y, x]
                    sums[k, 3] += y
                    sums[k, 4] += x
                    counts[k] += 1
        residual = 0.0
        for k in range(n_centres):
            if counts[k] > 0:
                ny = sums[k, 3] / counts[k]
                nx = sums[k, 4] / counts[k]
                residual += math.sqrt((ny - centres[k, 3]) ** 2 + (nx - centres[k, 4]) ** 2)
                for c in range(5):
                    centres[k, c] = sums[k, c] / counts[k]
        residuals[it] = residual / n_centres
        if residuals[it] < tol:
            break
    return labels, residuals


def slic_numba(image: np.ndarray, n_segments: int, compactness: float, max_iter: int,
               tol: float = RESIDUAL_TOL) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 -> ((H, W) int32 labels 0..n-1, connected, n)."""
    from .connectivity import enforce_connectivity

    lab = rgb_to_lab(image, SRGB_TO_LINEAR)  # (3, H, W)
    centres, step = grid_seeds(lab, int(n_segments))  # (K, 5)
    raw, _ = slic_iterate(lab, centres, step, float(compactness), int(max_iter), float(tol))
    # orphans: components smaller than a quarter of the nominal superpixel size N/K
    min_size = int(image.shape[0] * image.shape[1] / centres.shape[0]) // 4
    return enforce_connectivity(raw, min_size=min_size)
