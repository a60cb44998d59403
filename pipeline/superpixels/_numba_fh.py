"""Felzenszwalb-Huttenlocher graph segmentation as numba kernels.

Same graph and merge rule as ``skimage.segmentation.felzenszwalb`` (0.26): pixels are
nodes, the 8-neighbourhood gives four edge sets (right, down, down-right, up-right)
weighted by the Euclidean distance of the Gaussian-smoothed RGB values in [0, 1]; edges
are visited by increasing weight, equal weights in the order of edge id
``e = 4 * pixel + direction`` (a stable sort; skimage's own argsort is unstable, so labels
can differ where weights tie, and we compare with it by metrics);
components C1, C2 merge when w < min(Int(C1) + k/|C1|, Int(C2) + k/|C2|), k = scale/255,
the two thresholds rounded to float32 as skimage does; the smaller root index becomes the
root; a second pass over the same edges joins any pair with a side below ``min_size``.

Kernels are ``@njit(nogil=True, cache=True)`` so Dask threads can run them side by side.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# edge directions: pixel p = y * W + x joins p + offset, offset = (dy * W + dx)
_DIRS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # right, down, down-right, up-right


@njit(nogil=True, cache=True)
def edge_keys(smooth):
    """(H, W, C) float64 -> costs (4HW,) float64 indexed by edge id e = 4 p + direction
    (+inf where the partner pixel is outside the image) and sort keys (4HW,) uint64 =
    float32(cost) bits << 32 | e. float32 rounding is monotone, so sorting the keys
    orders edges by cost up to float32 ties, which ``sort_fixup`` then resolves."""
    height, width, nch = smooth.shape
    n_slots = 4 * height * width
    costs = np.empty(n_slots, np.float64)
    costs32 = np.empty(n_slots, np.float32)
    for y in range(height):
        for x in range(width):
            for d in range(4):
                dy, dx = _DIRS[d]
                e = 4 * (y * width + x) + d
                yy, xx = y + dy, x + dx
                if 0 <= yy < height and xx < width:
                    s = 0.0
                    for c in range(nch):
                        diff = smooth[yy, xx, c] - smooth[y, x, c]
                        s += diff * diff
                    cost = math.sqrt(s)
                else:
                    cost = np.inf
                costs[e] = cost
                costs32[e] = np.float32(cost)
    bits = costs32.view(np.uint32)  # non-negative floats order like their bits
    keys = np.empty(n_slots, np.uint64)
    for e in range(n_slots):
        keys[e] = (np.uint64(bits[e]) << np.uint64(32)) | np.uint64(e)
    return costs, keys


@njit(nogil=True, cache=True)
def sort_fixup(keys, costs, n_edges):
    """Sorted keys -> (order (E,) int32 edge ids, sorted_costs (E,) float64) in exact
    (float64 cost, edge id) order: runs whose float32 cost is equal are re-sorted."""
    order = np.empty(n_edges, np.int32)
    sorted_costs = np.empty(n_edges, np.float64)
    mask = np.uint64(0xFFFFFFFF)
    for j in range(n_edges):
        e = np.int32(keys[j] & mask)
        order[j] = e
        sorted_costs[j] = costs[e]
    shift = np.uint64(32)
    i = 0
    while i < n_edges:
        hi = keys[i] >> shift
        j = i + 1
        while j < n_edges and (keys[j] >> shift) == hi:
            j += 1
        if j - i > 64:  # ids ascend within the run, so a stable sort by cost is exact
            perm = np.argsort(sorted_costs[i:j], kind="mergesort")
            order[i:j] = order[i:j][perm]
            sorted_costs[i:j] = sorted_costs[i:j][perm]
        else:
            for a in range(i + 1, j):  # insertion sort on (cost, id); runs are short
                c = sorted_costs[a]
                v = order[a]
                b = a - 1
                while b >= i and (sorted_costs[b] > c or (sorted_costs[b] == c and order[b] > v)):
                    sorted_costs[b + 1] = sorted_costs[b]
                    order[b + 1] = order[b]
                    b -= 1
                sorted_costs[b + 1] = c
                order[b + 1] = v
        i = j
    return order, sorted_costs


@njit(nogil=True, cache=True, inline="always")
def _find_root(forest, n):
    root = n
    while forest[root] < root:
        root = forest[root]
    while forest[n] < n:  # path compression
        nxt = forest[n]
        forest[n] = root
        n = nxt
    return root


@njit(nogil=True, cache=True)
def fh_merge(order, sorted_costs, k, min_size, height, width):
    """Union-find over edges visited in ``order`` (costs ``sorted_costs``, same order).
    Returns ((H*W,) int32 labels 0..n-1 numbered by root pixel, which is the component's
    first pixel in raster order; n)."""
    n_pixels = height * width
    offsets = np.array([1, width, width + 1, 1 - width], np.int32)  # p -> partner
    forest = np.arange(n_pixels).astype(np.int32)  # parent; a root points to itself
    # per root, side by side so one cache line serves both: size, and the threshold
    # Int(C) + k/|C| held in float32 as skimage does (stored as its bits)
    node = np.empty((n_pixels, 2), np.int32)
    thr = node.view(np.float32)  # (H*W, 2); column 1 is the threshold
    node[:, 0] = 1
    thr[:, 1] = np.float32(k)
    for j in range(order.shape[0]):
        e = order[j]
        p = e >> 2
        a = _find_root(forest, p)
        b = _find_root(forest, p + offsets[e & 3])
        if a == b:
            continue
        cost = sorted_costs[j]
        if cost < min(thr[a, 1], thr[b, 1]):
            if b < a:
                a, b = b, a
            forest[b] = a  # the smaller index stays the root
            size = node[a, 0] + node[b, 0]
            node[a, 0] = size
            thr[a, 1] = np.float32(cost + k / size)  # Int(C) is the edge just added
    # second pass: absorb components below min_size along the cheapest edges first.
    # comp holds each pixel's root after pass one, so edges inside a pass-one component
    # (most of them) are skipped without walking the forest.
    comp = np.empty(n_pixels, np.int32)
    small = 0
    for p in range(n_pixels):
        r = _find_root(forest, p)
        comp[p] = r
        if r == p and node[p, 0] < min_size:
            small += 1
    if small > 0:
        for j in range(order.shape[0]):
            e = order[j]
            p = e >> 2
            a = comp[p]
            b = comp[p + offsets[e & 3]]
            if a == b:
                continue
            a = _find_root(forest, a)
            b = _find_root(forest, b)
            if a == b:
                continue
            if node[a, 0] < min_size or node[b, 0] < min_size:
                if b < a:
                    a, b = b, a
                forest[b] = a
                node[a, 0] += node[b, 0]
    labels = np.empty(n_pixels, np.int32)
    n = 0
    for p in range(n_pixels):  # a root precedes all its members in raster order
        r = _find_root(forest, comp[p])
        if r == p:
            labels[p] = n
            n += 1
        else:
            labels[p] = labels[r]
    return labels, n


def felzenszwalb_numba(image: np.ndarray, scale: float, sigma: float,
                       min_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int32 labels 0..n-1 (8-connected components, not yet
    4-connected; the caller enforces that)."""
    from scipy import ndimage as ndi

    height, width = image.shape[:2]
    if 4 * height * width >= 2**31:
        raise ValueError(f"image of {height}x{width} pixels is too large for the numba backend")
    img = image.astype(np.float64) / 255.0  # (H, W, 3) in [0, 1], as img_as_float64
    smooth = ndi.gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="reflect")
    costs, keys = edge_keys(np.ascontiguousarray(smooth))  # (4HW,), (4HW,)
    n_edges = height * (width - 1) + (height - 1) * width + 2 * (height - 1) * (width - 1)
    keys.sort()  # SIMD sort of packed keys; the out-of-image edges (+inf) go last
    order, sorted_costs = sort_fixup(keys, costs, n_edges)  # (E,), (E,)
    labels, _ = fh_merge(order, sorted_costs, float(scale) / 255.0, int(min_size), height, width)
    return labels.reshape(height, width)
