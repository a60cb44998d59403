"""How well a region map covers the ground-truth foreground (QGNet paper, Table 7).

For a map ``M`` in [0, 1] (guided or prior region map), resized to the label size, and a
threshold t, over all episodes:

    recall(t)    = sum |{M >= t} n FG| / sum |FG|
    precision(t) = sum |{M >= t} n FG| / sum |{M >= t}|
    IoU(t)       = sum |{M >= t} n FG| / sum |{M >= t} u FG|

FG = label == 1; pixels labelled 255 are left out of every count. The evaluator's maps cover
the test canvas (``model.fss.transforms.test_transform``); with ``crop=S`` they are brought
back to the original label with :func:`model.fss.metrics.map_to_original`, the same inverse
resize as the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_THRESHOLDS", "RegionMeter", "region_counts", "region_recall"]

DEFAULT_THRESHOLDS = tuple(round(float(t), 6) for t in np.arange(0.1, 1.0, 0.1))  # 0.1 .. 0.9


def _keys(thresholds: Sequence[float]) -> list[float]:
    return [round(float(t), 6) for t in thresholds]


def region_counts(maps: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *,
                  crop: int | None = None) -> dict:
    """Pixel counts behind :func:`region_recall`.

    Parameters
    ----------
    maps : Tensor, N x 1 x h x w, values in [0, 1]
    target : Tensor or ndarray, N x H x W, 0 / 1 / 255
    thresholds : sequence of float
    crop : int, optional
        The maps cover the S x S test canvas (S = ``crop``) of the H x W original, as the
        network's maps do: mapped back with :func:`model.fss.metrics.map_to_original`. Without
        it the maps cover the label's whole frame (plain bilinear resize).

    Returns
    -------
    dict
        ``fg`` (int: foreground pixels), ``tp`` and ``pos`` (arrays, one per threshold:
        foreground pixels with M >= t, valid pixels with M >= t).
    """
    target = torch.as_tensor(target, device=maps.device)
    if maps.dim() != 4 or maps.shape[1] != 1 or target.dim() != 3 or target.shape[0] != maps.shape[0]:
        raise ValueError(f"expected maps N x 1 x h x w and target N x H x W, got {tuple(maps.shape)} and {tuple(target.shape)}")
    if crop is not None:
        from model.fss.metrics import map_to_original

        m = map_to_original(maps, target.shape[-2:], crop=crop)[:, 0]  # N x H x W
    else:
        with torch.autocast(maps.device.type, enabled=False):
            m = F.interpolate(maps.float(), size=target.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
    valid = target != 255
    fg = target == 1
    th = torch.tensor(_keys(thresholds), device=m.device, dtype=m.dtype).view(-1, 1)  # T x 1
    mv = m[valid].view(1, -1)  # 1 x V
    above = mv >= th  # T x V
    tp = (above & fg[valid].view(1, -1)).sum(dim=1)  # T
    pos = above.sum(dim=1)  # T
    return {"fg": int(fg.sum()), "tp": tp.cpu().numpy().astype(np.int64), "pos": pos.cpu().numpy().astype(np.int64)}


def region_recall(maps: torch.Tensor, target, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[float, float]:
    """Fraction of ground-truth foreground pixels whose map value is >= each threshold.

    Sums over the N episodes of the batch (for many episodes of different sizes use
    :class:`RegionMeter`). Keys are the thresholds rounded to 6 decimals.

    Examples
    --------
    >>> m = torch.tensor([[[[0.0, 0.5], [0.8, 1.0]]]])
    >>> region_recall(m, torch.tensor([[[1, 1], [0, 1]]]), thresholds=[0.4, 0.9])
    {0.4: 0.6666666666666666, 0.9: 0.3333333333333333}
    """
    c = region_counts(maps, target, thresholds)
    return {t: (float(tp / c["fg"]) if c["fg"] else float("nan")) for t, tp in zip(_keys(thresholds), c["tp"], strict=True)}


class RegionMeter:
    """Accumulates :func:`region_counts` over episodes; recall, precision and IoU per threshold."""

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = _keys(thresholds)
        self.fg = 0
        self.tp = np.zeros(len(self.thresholds), dtype=np.int64)
        self.pos = np.zeros(len(self.thresholds), dtype=np.int64)
        self.episodes = 0

    def update(self, maps: torch.Tensor, target, *, crop: int | None = None) -> None:
        """``maps``: N x 1 x h x w; ``target``: N x H x W (or H x W with N == 1); ``crop``:
        the maps are on the test canvas (see :func:`region_counts`)."""
        target = torch.as_tensor(target)
        if target.dim() == 2:
            target = target.unsqueeze(0)
        c = region_counts(maps, target, self.thresholds, crop=crop)
        self.fg += c["fg"]
        self.tp += c["tp"]
        self.pos += c["pos"]
        self.episodes += int(maps.shape[0])

    def merge(self, other: RegionMeter) -> RegionMeter:
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge region meters with different thresholds")
        self.fg += other.fg
        self.tp += other.tp
        self.pos += other.pos
        self.episodes += other.episodes
        return self

    def state_dict(self) -> dict:
        return {"thresholds": list(self.thresholds), "fg": int(self.fg), "tp": self.tp.tolist(),
                "pos": self.pos.tolist(), "episodes": int(self.episodes)}

    def load_state_dict(self, state) -> RegionMeter:
        self.thresholds = _keys(state["thresholds"])
        self.fg = int(state["fg"])
        self.tp = np.asarray(state["tp"], dtype=np.int64)
        self.pos = np.asarray(state["pos"], dtype=np.int64)
        self.episodes = int(state["episodes"])
        return self

    def recall(self) -> dict[float, float]:
        return {t: float(tp / self.fg) if self.fg else float("nan") for t, tp in zip(self.thresholds, self.tp, strict=True)}

    def precision(self) -> dict[float, float]:
        return {t: float(tp / p) if p else float("nan") for t, tp, p in zip(self.thresholds, self.tp, self.pos, strict=True)}

    def iou(self) -> dict[float, float]:
        out = {}
        for t, tp, p in zip(self.thresholds, self.tp, self.pos, strict=True):
            u = self.fg + p - tp
            out[t] = float(tp / u) if u else float("nan")
        return out

    def summary(self) -> dict:
        """``{"recall", "precision", "iou"}``: each threshold (as a string) -> value; plus ``episodes``."""
        return {name: {str(t): v for t, v in getattr(self, name)().items()} for name in ("recall", "precision", "iou")} | {
            "episodes": self.episodes}
