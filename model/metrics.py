"""Few-shot segmentation metrics: per-class mIoU and FB-IoU, accumulated over episodes.

PFENet's protocol (``test.py``), which QGNet, BAM and HDMNet follow:

- mIoU: for each test class c, ``IoU_c = sum_e I_e / sum_e U_e`` over the episodes e of
  class c (foreground intersection and union, label 255 ignored); mIoU = mean of IoU_c
  over the fold's classes.
- FB-IoU: foreground and background IoU, each with intersections and unions summed over
  all episodes regardless of class, then averaged.

Everything is kept as 2 x 2 confusion counts per class (``confusion[c][t, p]``: pixels
with target t and prediction p), so meters merge by addition (DDP ranks, shards of
episodes) and the FB-IoU confusion is the sum over classes::

    meter = FewShotMeter(test_classes)
    for cls, logits, label in episodes:
        meter.update(cls, upsample_logits(logits, size=label.shape), label)
    meter.miou(), meter.fb_iou(), meter.per_class()

References
----------
.. [1] Tian et al., PFENet, TPAMI 2020 (dvlab-research/PFENet ``test.py``,
       ``util/util.py intersectionAndUnionGPU``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FewShotMeter", "episode_confusion", "summarise_seeds", "upsample_logits"]

IGNORE_INDEX = 255
_IOU_EPS = 1e-10  # PFENet: I / (U + 1e-10), so a class whose unions sum to 0 scores 0


def episode_confusion(pred, target, *, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """2 x 2 confusion counts of one episode: ``C[t, p]`` = #pixels with target t, prediction p.

    Parameters
    ----------
    pred : array or Tensor, H x W (any shape), integers in {0, 1}
    target : array or Tensor, same shape, integers in {0, 1, ignore_index}
        Pixels equal to ``ignore_index`` are not counted.

    Returns
    -------
    ndarray, 2 x 2, int64
        Foreground IoU = ``C[1,1] / (C[1,1] + C[0,1] + C[1,0])``; background IoU =
        ``C[0,0] / (C[0,0] + C[0,1] + C[1,0])``.

    Examples
    --------
    >>> episode_confusion(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [255, 0]]))
    array([[1, 1],
           [0, 1]])
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        p = torch.as_tensor(pred).reshape(-1).long()
        t = torch.as_tensor(target, device=p.device).reshape(-1).long()
        valid = t != ignore_index
        counts = torch.bincount(t[valid] * 2 + p[valid], minlength=4)
        counts = counts.cpu().numpy()
    else:
        p = np.asarray(pred).reshape(-1).astype(np.int64)
        t = np.asarray(target).reshape(-1).astype(np.int64)
        valid = t != ignore_index
        counts = np.bincount(t[valid] * 2 + p[valid], minlength=4)
    if counts.size != 4:
        raise ValueError(
            f"pred must hold only 0/1 and target only 0/1/{ignore_index}; binarise the label first "
            f"(chosen class -> 1, {ignore_index} kept, everything else -> 0)"
        )
    return counts.reshape(2, 2).astype(np.int64)


def _fg_iu(conf: np.ndarray) -> tuple[int, int]:
    """Foreground (intersection, union) from 2 x 2 counts (last two axes)."""
    inter = conf[..., 1, 1]
    return inter, conf[..., 1, 1] + conf[..., 0, 1] + conf[..., 1, 0]


class FewShotMeter:
    """Accumulates PFENet's per-class mIoU and FB-IoU over episodes.

    Parameters
    ----------
    class_ids : iterable of int
        The fold's test classes (1-based ids).

    Attributes
    ----------
    class_ids : list of int
        Sorted.
    confusion : ndarray, C x 2 x 2, int64
        Summed confusion counts per class (row order of ``class_ids``).
    episodes : ndarray, C, int64
        Episodes seen per class.
    """

    def __init__(self, class_ids: Iterable[int]) -> None:
        self.class_ids = sorted(int(c) for c in class_ids)
        if not self.class_ids or len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"class_ids must be distinct and non-empty, got {self.class_ids}")
        self._row = {c: i for i, c in enumerate(self.class_ids)}
        self.confusion = np.zeros((len(self.class_ids), 2, 2), dtype=np.int64)
        self.episodes = np.zeros(len(self.class_ids), dtype=np.int64)

    # ------------------------------------------------------------------ accumulate
    def update(self, cls: int, pred, target) -> np.ndarray:
        """Add one episode (``pred``, ``target``: H x W, see :func:`episode_confusion`).

        Returns the episode's 2 x 2 confusion.
        """
        cls = int(cls)
        if cls not in self._row:
            raise ValueError(f"class {cls} is not one of this meter's classes {self.class_ids}")
        conf = episode_confusion(pred, target)
        self.confusion[self._row[cls]] += conf
        self.episodes[self._row[cls]] += 1
        return conf

    def merge(self, other: FewShotMeter) -> FewShotMeter:
        """Add another meter's counts (same classes) into this one; returns self."""
        if other.class_ids != self.class_ids:
            raise ValueError(f"cannot merge meters over different classes: {self.class_ids} vs {other.class_ids}")
        self.confusion += other.confusion
        self.episodes += other.episodes
        return self

    def state_dict(self) -> dict:
        """Plain lists and ints (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {"class_ids": list(self.class_ids), "confusion": self.confusion.tolist(), "episodes": self.episodes.tolist()}

    def load_state_dict(self, state: Mapping) -> FewShotMeter:
        """Replace the counts with ``state`` (from :meth:`state_dict`); returns self."""
        if [int(c) for c in state["class_ids"]] != self.class_ids:
            raise ValueError(f"state is over classes {list(state['class_ids'])}, this meter over {self.class_ids}")
        self.confusion = np.asarray(state["confusion"], dtype=np.int64).reshape(len(self.class_ids), 2, 2)
        self.episodes = np.asarray(state["episodes"], dtype=np.int64).reshape(len(self.class_ids))
        return self

    @classmethod
    def from_state_dict(cls, state: Mapping) -> FewShotMeter:
        return cls(state["class_ids"]).load_state_dict(state)

    # ------------------------------------------------------------------ results
    @property
    def n_episodes(self) -> int:
        return int(self.episodes.sum())

    @property
    def missing_classes(self) -> list[int]:
        """Classes without any episode (left out of mIoU)."""
        return [c for c, e in zip(self.class_ids, self.episodes, strict=True) if e == 0]

    def per_class(self) -> dict[int, float]:
        """Class id -> IoU = sum of intersections / (sum of unions + 1e-10), classes with episodes."""
        inter, union = _fg_iu(self.confusion)
        return {
            c: float(inter[i] / (union[i] + _IOU_EPS)) for i, c in enumerate(self.class_ids) if self.episodes[i] > 0
        }

    def miou(self) -> float:
        """Mean of :meth:`per_class` (NaN before any episode)."""
        ious = list(self.per_class().values())
        return float(np.mean(ious)) if ious else float("nan")

    def fb_iou(self) -> float:
        """Mean of background and foreground IoU, each summed over all episodes."""
        c = self.confusion.sum(axis=0)  # 2 x 2
        if c.sum() == 0:
            return float("nan")
        fg = c[1, 1] / (c[1, 1] + c[0, 1] + c[1, 0] + _IOU_EPS)
        bg = c[0, 0] / (c[0, 0] + c[0, 1] + c[1, 0] + _IOU_EPS)
        return float((fg + bg) / 2)

    def summary(self) -> dict:
        """``{"miou", "fb_iou", "per_class", "episodes", "missing_classes"}`` (JSON-ready)."""
        return {
            "miou": self.miou(),
            "fb_iou": self.fb_iou(),
            "per_class": {str(c): v for c, v in self.per_class().items()},
            "episodes": self.n_episodes,
            "missing_classes": self.missing_classes,
        }


def summarise_seeds(values: Sequence[float] | Sequence[Mapping[str, float]]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one value) over seeds.

    ``values`` is a list of numbers, or of dicts (e.g. ``meter.summary()``) whose numeric
    entries are summarised key by key: ``{"miou": {"mean", "std", "n", "values"}, ...}``.
    """
    def one(xs: Sequence[float]) -> dict:
        a = np.asarray(xs, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size),
                "values": [float(x) for x in a]}

    if not values:
        raise ValueError("summarise_seeds needs at least one value")
    if isinstance(values[0], Mapping):
        keys = [k for k, v in values[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return {k: one([v[k] for v in values]) for k in keys}
    return one(values)


def upsample_logits(logits: torch.Tensor, size: Sequence[int], *, padded_square: bool = False) -> torch.Tensor:
    """Prediction at the original label resolution (PFENet ``ori_resize``).

    Logits are resized bilinearly (align_corners=True) and arg-maxed.

    Parameters
    ----------
    logits : Tensor, N x 2 x h x w
    size : (H, W)
        The original label size.
    padded_square : bool, default False
        The network input was the image resized so its longer side fits, then padded at
        the bottom / right to a square (PFENet's ``test_Resize``). Then the logits are
        resized to L x L, L = max(H, W), and the top-left H x W kept, which is what
        PFENet's scoring against the label padded with 255 amounts to.

    Returns
    -------
    Tensor, long: H x W when N == 1, else N x H x W
    """
    H, W = int(size[0]), int(size[1])
    out_size = (max(H, W), max(H, W)) if padded_square else (H, W)
    with torch.autocast(logits.device.type, enabled=False):
        up = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=True)
    pred = up.argmax(dim=1)[:, :H, :W]  # N x H x W
    return pred[0] if pred.shape[0] == 1 else pred
