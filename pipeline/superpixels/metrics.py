"""Superpixel quality metrics, vectorised numpy (definitions of davidstutz/superpixel-benchmark).

All functions take (H, W) integer label maps. ``ignore`` names a ground-truth value (for
example 255, or CamVid's void id 11) whose pixels are left out: they are not counted in
N, not in any superpixel's size, and never form ground-truth boundaries.

References
----------
Stutz, Hermans, Leibe, "Superpixels: an evaluation of the state-of-the-art", CVIU 2018.
Neubert, Protzel, "Superpixel benchmark and comparison", Forum Bildverarbeitung 2012.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _check_pair(labels: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    gt = np.asarray(gt)
    if labels.ndim != 2 or labels.shape != gt.shape:
        raise ValueError(
            f"expected two 2-D label maps of the same shape, got {labels.shape} and {gt.shape}"
        )
    if labels.dtype.kind not in "iub" or gt.dtype.kind not in "iub":
        raise ValueError(f"expected integer label maps, got {labels.dtype} and {gt.dtype}")
    return labels, gt


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where any 4-neighbour has a different label."""
    labels = np.asarray(labels)
    b = np.zeros(labels.shape, bool)
    dv = labels[1:, :] != labels[:-1, :]  # (H-1, W)
    dh = labels[:, 1:] != labels[:, :-1]  # (H, W-1)
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


def _gt_boundary(gt: np.ndarray, ignore: int | None) -> np.ndarray:
    if ignore is None:
        return boundary_map(gt)
    valid = gt != ignore
    b = np.zeros(gt.shape, bool)
    # a pair counts only when both pixels are valid and their labels differ
    dv = (gt[1:, :] != gt[:-1, :]) & valid[1:, :] & valid[:-1, :]
    dh = (gt[:, 1:] != gt[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


def boundary_recall(labels: np.ndarray, gt: np.ndarray, *, tolerance: int | None = None,
                    ignore: int | None = None) -> float:
    """Fraction of ground-truth boundary pixels with a superpixel boundary pixel nearby.

    A pixel is a boundary pixel when one of its 4-neighbours has another label. A
    ground-truth boundary pixel is recalled when a superpixel boundary pixel lies in the
    (2r+1) x (2r+1) window centred on it, r = ``tolerance`` (default
    round(0.0025 * image diagonal), 2 px at 640x480). With ``ignore``, pixels of that
    ground-truth value are not boundary pixels and do not make their neighbours ones.
    An image without ground-truth boundaries has recall 1.0 (nothing to recall).
    """
    labels, gt = _check_pair(labels, gt)
    if tolerance is None:
        tolerance = int(round(0.0025 * float(np.hypot(*gt.shape))))
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    gt_b = _gt_boundary(gt, ignore)
    n_gt = int(gt_b.sum())
    if n_gt == 0:
        return 1.0
    sp_b = boundary_map(labels)
    if tolerance > 0:
        sp_b = ndi.maximum_filter(sp_b, size=2 * tolerance + 1, mode="constant", cval=False)
    return float((gt_b & sp_b).sum() / n_gt)


def _contingency(a: np.ndarray, b: np.ndarray, ignore: int | None = None) -> np.ndarray:
    """(n_a, n_b) int64 overlap counts |A_i n B_j| over pixels where b != ignore."""
    a = a.ravel()
    b = b.ravel()
    if ignore is not None:
        keep = b != ignore
        a, b = a[keep], b[keep]
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    na = int(ai.max()) + 1 if ai.size else 0
    nb = int(bi.max()) + 1 if bi.size else 0
    return np.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb)


def undersegmentation_error(labels: np.ndarray, gt: np.ndarray, *,
                            ignore: int | None = None) -> float:
    """Neubert-Protzel undersegmentation error, 0 is best.

    UE = (1/N) sum_G sum_{S: S n G != 0} min(|S n G|, |S| - |S n G|): each superpixel
    overlapping a ground-truth segment pays the smaller of its part inside and outside.
    """
    labels, gt = _check_pair(labels, gt)
    c = _contingency(labels, gt, ignore)  # (n_sp, n_gt)
    n = c.sum()
    if n == 0:
        return 0.0
    size = c.sum(axis=1, keepdims=True)  # |S|, (n_sp, 1)
    return float(np.minimum(c, size - c).sum() / n)  # zero overlaps add min(0, |S|) = 0


def achievable_segmentation_accuracy(labels: np.ndarray, gt: np.ndarray, *,
                                     ignore: int | None = None) -> float:
    """ASA = (1/N) sum_S max_G |S n G|: accuracy when every superpixel takes its best
    ground-truth label. 1 is best; a single superpixel scores the largest class share."""
    labels, gt = _check_pair(labels, gt)
    c = _contingency(labels, gt, ignore)
    n = c.sum()
    return float(c.max(axis=1).sum() / n) if n else 1.0


def label_agreement(a: np.ndarray, b: np.ndarray, *, method: str = "ari") -> float:
    """Agreement of two label maps of one image, invariant to label renaming.

    ``method="ari"`` (default): adjusted Rand index over all pixel pairs (Hubert and
    Arabie 1985); 1 for identical partitions, about 0 for independent ones. Chosen because
    it is symmetric and chance-corrected, so it does not reward finer maps the way ASA does.
    ``method="asa"``: symmetric ASA, mean of ASA(a against b) and ASA(b against a).
    """
    a, b = _check_pair(a, b)
    c = _contingency(a, b).astype(np.float64)
    if method == "asa":
        n = c.sum()
        return float((c.max(axis=1).sum() + c.max(axis=0).sum()) / (2 * n))
    if method != "ari":
        raise ValueError(f"unknown method {method!r}; expected 'ari' or 'asa'")
    n = c.sum()

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index = pairs(c)
    pa = pairs(c.sum(axis=1))
    pb = pairs(c.sum(axis=0))
    expected = pa * pb / pairs(np.array([n]))
    top = (pa + pb) / 2
    if top == expected:  # both partitions trivial (one segment, or all singletons)
        return 1.0
    return float((index - expected) / (top - expected))


def is_connected(labels: np.ndarray) -> bool:
    """True when every label value forms exactly one 4-connected region."""
    from .connectivity import count_components

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {labels.shape}")
    if labels.size == 0:
        return True
    return count_components(labels) == np.unique(labels).size
