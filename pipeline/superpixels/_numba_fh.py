"""Felzenszwalb-Huttenlocher graph segmentation as numba kernels.

Same graph and merge rule as ``skimage.segmentation.felzenszwalb`` (0.26): pixels are
nodes, the 8-neighbourhood gives four edge sets (right, down, down-right, up-right)
weighted by the Euclidean distance of the Gaussian-smoothed RGB values in [0, 1]; edges
are visited by increasing weight, equal weights in the order of edge id
``e = 4 * pixel + direction`` (a stable sort; skimage's own argsort is unstable, so labels
can differ where weights tie, and we compare with it by metrics). The order comes from one
SIMD sort of 64-bit keys ``float32(w) bits << 32 | e`` (float32 rounding is monotone) and a
fix-up of the few runs whose float32 weights tie (about 2 % of the edges on photos);
components C1, C2 merge when w < min(Int(C1) + k/|C1|, Int(C2) + k/|C2|), k = scale/255,
the two thresholds rounded to float32 as skimage does (union by size with path halving:
which pixel is the root changes no partition); a second pass over the edges the first one rejected joins any pair with a side below
``min_size``. Then the contract pass (``absorb_fragments``, shared with the skimage backend):
the 8-connected segments are split into 4-connected fragments and every fragment below
``min_size`` is merged into a 4-neighbour by the same rule (cheapest 4-edge first), so every
returned label is one 4-connected region of >= ``min_size`` pixels (docs/superpixels.md).

Kernels are ``@njit(nogil=True, cache=True)`` so Dask threads can run them side by side.
Their large work arrays are kept per thread between calls (``_work``): a fresh 30-60 MB
every image costs more in page faults than some kernels cost in arithmetic.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

from .connectivity import _connected_relabel_into

# edge directions: pixel p = y * W + x joins p + offset, offset = (dy * W + dx)
_DIRS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # right, down, down-right, up-right


def gaussian_weights(sigma: float) -> np.ndarray:
    """The correlation weights of scipy.ndimage.gaussian_filter1d (truncate 4.0), computed
    with the same numpy operations so they are the same bits: (2r+1,) float64. Sigma
    <= 1e-15 gives (1.0,): scipy skips such an axis."""
    sigma = float(sigma)
    if sigma <= 1e-15:
        return np.ones(1)
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return np.ascontiguousarray((phi / phi.sum())[::-1])


@njit(nogil=True, cache=True, inline="always")
def _reflect(i, n):
    """scipy's "reflect" boundary (d c b a | a b c d | d c b a), any i."""
    period = 2 * n
    i = i % period
    if i < 0:
        i += period
    return i if i < n else period - 1 - i


@njit(nogil=True, cache=True)
def smooth_rgb(image, weights, src, tmp):
    """(H, W, C) uint8 -> (H, W, C) float64: image / 255 smoothed along rows then columns
    with ``weights`` (2r+1,), reflect mode. Bit for bit
    ``ndi.gaussian_filter(image / 255., (sigma, sigma, 0), mode="reflect")`` (what skimage
    smooths with): the same weights and scipy's summation order for symmetric kernels,
    centre first, then the pairs (x-j, x+j) from j = r down to 1. ``src`` and ``tmp`` are
    (H, W*C) float64 work arrays; the result is written into (and returned as) ``src``."""
    height, width, nch = image.shape
    r = weights.shape[0] // 2
    n = width * nch  # a row, flat
    flat = image.reshape(height, n)
    for y in range(height):
        for i in range(n):
            src[y, i] = flat[y, i] / 255.0
    if r == 0:
        return src.reshape(height, width, nch)
    wc = weights[r]
    # tmp: smoothed along axis 0
    for y in range(height):
        row = tmp[y]
        s0 = src[y]
        for i in range(n):
            row[i] = s0[i] * wc
        for j in range(r, 0, -1):
            a = src[_reflect(y - j, height)]
            b = src[_reflect(y + j, height)]
            wj = weights[r + j]
            for i in range(n):
                row[i] += (a[i] + b[i]) * wj
    lo = min(r, width)  # columns [lo, hi) need no reflection
    hi = max(lo, width - r)
    for y in range(height):
        t = tmp[y]
        o = src[y]  # src is no longer needed: reuse it for the output
        for i in range(lo * nch, hi * nch):
            o[i] = t[i] * wc
        for j in range(r, 0, -1):
            wj = weights[r + j]
            jc = j * nch
            for i in range(lo * nch, hi * nch):
                o[i] += (t[i - jc] + t[i + jc]) * wj
        for x in range(width):
            if lo <= x < hi:
                continue
            for c in range(nch):
                acc = t[x * nch + c] * wc
                for j in range(r, 0, -1):
                    acc += (t[_reflect(x - j, width) * nch + c]
                            + t[_reflect(x + j, width) * nch + c]) * weights[r + j]
                o[x * nch + c] = acc
    return src.reshape(height, width, nch)


@njit(nogil=True, cache=True)
def edge_keys(smooth, costs, keys):
    """(H, W, C) float64 -> fills costs (4HW,) float64 indexed by edge id e = 4 p + direction
    (+inf where the partner pixel is outside the image) and the sort keys (4HW,) uint64 =
    float32(cost) bits << 32 | e (non-negative floats order like their bits)."""
    height, width, nch = smooth.shape
    f32 = np.empty(1, np.float32)  # float32 -> its bits through memory (numba has no bitcast)
    u32 = f32.view(np.uint32)
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
                f32[0] = np.float32(cost)
                keys[e] = (np.uint64(u32[0]) << np.uint64(32)) | np.uint64(e)


@njit(nogil=True, cache=True)
def sort_fixup(keys, costs, n_edges, order, sorted_costs):
    """Sorted keys -> fills order (E,) int32 edge ids and sorted_costs (E,) float64 in exact
    (float64 cost, edge id) order: runs whose float32 cost is equal are re-sorted. One
    gather of the float64 costs here (independent loads, which the CPU overlaps) is
    cheaper than reading them at each merge inside the union-find loop."""
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
        if j - i > 32:  # ids ascend within the run, so a stable sort by cost is exact
            perm = np.argsort(sorted_costs[i:j], kind="mergesort")
            order[i:j] = order[i:j][perm]
            sorted_costs[i:j] = sorted_costs[i:j][perm]
        elif j - i > 1:
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


@njit(nogil=True, cache=True, inline="always")
def _find_root(forest, n):
    """Root of n, halving the path on the way (each node visited points to its
    grandparent): one pass and fewer writes than full compression, same roots."""
    while forest[n] != n:
        g = forest[forest[n]]
        forest[n] = g
        n = g
    return n


@njit(nogil=True, cache=True)
def fh_merge(order, sorted_costs, k, min_size, height, width, forest, node, rejected, seg):
    """Union-find over edges visited in ``order`` (costs ``sorted_costs``, same order).

    forest, seg (H*W,) int32, node (H*W, 2) int32 and rejected (E,) int32 are work arrays.
    Fills seg with each pixel's segment id (its union-find root, some pixel of the segment) and
    returns cand (M,) int32: the right/down edge ids joining two different segments, in
    visiting order, for ``absorb_fragments``."""
    n_pixels = height * width
    n_edges = order.shape[0]
    offsets = np.array([1, width, width + 1, 1 - width], np.int32)  # p -> partner
    for p in range(n_pixels):
        forest[p] = p  # parent; a root points to itself
    # per root, side by side so one cache line serves both: size, and the threshold
    # Int(C) + k/|C| held in float32 as skimage does (stored as its bits)
    thr = node.view(np.float32)  # (H*W, 2); column 1 is the threshold
    k32 = np.float32(k)
    for p in range(n_pixels):
        node[p, 0] = 1
        thr[p, 1] = k32
    # positions j of the edges pass one did not merge, in order: only these can matter
    # later (an edge inside a component stays inside; components only grow)
    m = 0
    touch = 0  # loads of pixels a few edges ahead: their cache misses overlap this edge's
    ahead = 8
    for j in range(n_edges):
        if j + ahead < n_edges:
            touch ^= forest[order[j + ahead] >> 2]
        e = order[j]
        p = e >> 2
        a = _find_root(forest, p)
        b = _find_root(forest, p + offsets[e & 3])
        if a == b:
            continue
        cost = sorted_costs[j]
        if cost < min(thr[a, 1], thr[b, 1]):
            if node[a, 0] < node[b, 0]:
                a, b = b, a
            forest[b] = a  # union by size: the larger component stays the root
            size = node[a, 0] + node[b, 0]
            node[a, 0] = size
            thr[a, 1] = np.float32(cost + k / size)  # Int(C) is the edge just added
        else:
            rejected[m] = j
            m += 1
    # pass two: absorb segments below min_size along the cheapest rejected edges first
    for i in range(m):
        e = order[rejected[i]]
        p = e >> 2
        a = _find_root(forest, p)
        b = _find_root(forest, p + offsets[e & 3])
        if a == b:
            continue
        if node[a, 0] < min_size or node[b, 0] < min_size:
            if node[a, 0] < node[b, 0]:
                a, b = b, a
            forest[b] = a
            node[a, 0] += node[b, 0]
    for p in range(n_pixels):
        seg[p] = _find_root(forest, p)
    cand = np.empty(m + 1, np.int32)
    cand[m] = touch  # keeps the look-ahead loads alive; sliced off below
    n_cand = 0
    for i in range(m):
        e = order[rejected[i]]
        if (e & 3) < 2:  # right or down: a 4-neighbour edge
            p = e >> 2
            if seg[p] != seg[p + offsets[e & 3]]:
                cand[n_cand] = e
                n_cand += 1
    return cand[:n_cand]


@njit(nogil=True, cache=True)
def absorb_fragments(seg, height, width, cand, min_size, frag, labels):
    """The contract pass. seg (H*W,) int32 segment ids; cand (M,) int32 right/down edge
    ids e = 4 p + d (d 0: p -> p + 1, d 1: p -> p + W) covering every 4-neighbour pair of
    different segments, cheapest first. Splits the segments into 4-connected fragments,
    then walks ``cand`` and joins two fragment groups when either has < ``min_size``
    pixels. Fills labels (H*W,) int32 with labels 0..n-1 in raster order of first pixel
    (frag (H*W,) int32 is scratch) and returns (labels, n); each label is 4-connected, and
    has >= min_size pixels unless the image is smaller."""
    n_frag = _connected_relabel_into(seg, height, width, 0, frag, labels)  # raster-ordered
    # fragments in frag; labels (both (H*W,) int32 work arrays) is the fill queue until the
    # final pass writes the result into it
    size = np.zeros(n_frag, np.int64)
    for p in range(height * width):
        size[frag[p]] += 1
    forest = np.arange(n_frag).astype(np.int32)
    for i in range(cand.shape[0]):
        e = cand[i]
        p = e >> 2
        q = p + 1 if (e & 3) == 0 else p + width
        a = _find_root(forest, frag[p])
        b = _find_root(forest, frag[q])
        if a == b:
            continue
        if size[a] < min_size or size[b] < min_size:
            if b < a:
                a, b = b, a
            forest[b] = a  # the group's root is its first fragment in raster order
            size[a] += size[b]
    new_id = np.empty(n_frag, np.int32)
    n = 0
    for f in range(n_frag):  # roots in raster order of their first pixel
        r = _find_root(forest, f)
        if r == f:
            new_id[f] = n
            n += 1
        else:
            new_id[f] = new_id[r]
    for p in range(height * width):
        labels[p] = new_id[frag[p]]
    return labels, n


@njit(nogil=True, cache=True)
def boundary_edges(seg, smooth):
    """seg (H, W) int32, smooth (H, W, C) float64 -> (M,) int32 ids of the right/down
    edges between different segments, ordered by (cost, id) as the numba kernel visits
    them (for segmentations that did not come from that kernel: the skimage backend)."""
    height, width, nch = smooth.shape
    ids = np.empty(2 * height * width, np.int32)
    costs = np.empty(2 * height * width, np.float64)
    m = 0
    for y in range(height):
        for x in range(width):
            for d in range(2):
                yy = y + d
                xx = x + 1 - d
                if yy >= height or xx >= width or seg[y, x] == seg[yy, xx]:
                    continue
                s = 0.0
                for c in range(nch):
                    diff = smooth[yy, xx, c] - smooth[y, x, c]
                    s += diff * diff
                ids[m] = 4 * (y * width + x) + d
                costs[m] = math.sqrt(s)
                m += 1
    perm = np.argsort(costs[:m], kind="mergesort")  # stable: ties keep id order
    return ids[:m][perm]


class _Work(threading.local):
    """Per-thread work arrays, kept between calls up to ``KEEP_PIXELS`` pixels."""

    KEEP_PIXELS = 4_000_000

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype, pixels: int) -> np.ndarray:
        size = int(np.prod(shape))
        a = self.arrays.get(name)
        if a is None or a.size < size or a.dtype != dtype:
            a = np.empty(size, dtype)
            if pixels <= self.KEEP_PIXELS:
                self.arrays[name] = a
        return a[:size].reshape(shape)


_work = _Work()


def smooth(image: np.ndarray, sigma: float, *, keep: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float64, skimage's Felzenszwalb smoothing. With
    ``keep`` the result lives in this thread's work arrays (valid until the next call)."""
    image = np.ascontiguousarray(image)
    height, width, nch = image.shape
    shape = (height, width * nch)
    if keep:
        src = _work.get("src", shape, np.float64, height * width)
        tmp = _work.get("tmp", shape, np.float64, height * width)
    else:
        src, tmp = np.empty(shape), np.empty(shape)
    return smooth_rgb(image, gaussian_weights(sigma), src, tmp)


def felzenszwalb_numba(image: np.ndarray, scale: float, sigma: float,
                       min_size: int) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 -> ((H, W) int32 labels 0..n-1 under the contract, n)."""
    height, width = image.shape[:2]
    if 4 * height * width >= 2**31:
        raise ValueError(f"image of {height}x{width} pixels is too large for the numba backend")
    npx = height * width
    sm = smooth(image, sigma, keep=True)  # (H, W, 3) float64 in [0, 1]
    costs = _work.get("costs", (4 * npx,), np.float64, npx)
    keys = _work.get("keys", (4 * npx,), np.uint64, npx)
    edge_keys(sm, costs, keys)
    n_edges = height * (width - 1) + (height - 1) * width + 2 * (height - 1) * (width - 1)
    keys.sort()  # SIMD sort of packed keys; the out-of-image edges (+inf) go last
    order = _work.get("order", (n_edges,), np.int32, npx)
    sorted_costs = _work.get("sorted_costs", (n_edges,), np.float64, npx)
    sort_fixup(keys, costs, n_edges, order, sorted_costs)
    seg = _work.get("seg", (npx,), np.int32, npx)
    cand = fh_merge(order, sorted_costs, float(scale) / 255.0, int(min_size), height, width,
                    _work.get("forest", (npx,), np.int32, npx),
                    _work.get("node", (npx, 2), np.int32, npx),
                    _work.get("rejected", (max(n_edges, 1),), np.int32, npx), seg)
    labels, n = absorb_fragments(seg, height, width, cand, int(min_size),
                                 _work.get("frag", (npx,), np.int32, npx),
                                 _work.get("labels", (npx,), np.int32, npx))
    return labels.reshape(height, width), int(n)  # a work array: the caller copies it


def contract_skimage(raw: np.ndarray, image: np.ndarray, sigma: float,
                     min_size: int) -> tuple[np.ndarray, int]:
    """Raw skimage labels (H, W) -> (labels 0..n-1 under the contract, n): the same
    contract pass as the numba backend, with skimage's smoothing for the edge costs."""
    height, width = raw.shape
    seg = np.ascontiguousarray(raw, dtype=np.int32)
    cand = boundary_edges(seg, smooth(image, sigma))
    labels, n = absorb_fragments(seg.ravel(), height, width, cand, int(min_size),
                                 np.empty(height * width, np.int32),
                                 np.empty(height * width, np.int32))
    return labels.reshape(height, width), int(n)
