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
    for cls, logits, label in episodes:       # logits: 1 x 2 x S x S on the test canvas
        meter.update(cls, upsample_logits(logits, size=label.shape), label)
    meter.miou(), meter.fb_iou(), meter.per_class()

Scoring at the original resolution: the network sees the test canvas of
:func:`model.fss.transforms.test_transform` (PFENet ``Resize``: the image block
``test_size(H, W, S)`` at the top-left of an S x S canvas). Two ways back to the H x W
label, both computed by the evaluator in one pass (``protocol=``):

- ``"exact"`` (ours, the default of the functions here): :func:`map_to_original`, the
  exact inverse of that resize, for logits and region maps of any resolution covering the
  canvas;
- ``"pfenet"``: PFENet's ``test.py`` with ``ori_resize`` (the protocol of the QGNet,
  PFENet and BAM tables): the S x S logits resized to L x L (L = max(H, W), bilinear,
  ``align_corners=True``) and read on the label padded to L x L with 255, i.e. cropped to
  ``[:H, :W]`` (:func:`pfenet_to_original`). Because ``Resize`` floors the block to a
  multiple of 8, this reads a slightly stretched prediction (docs/fss.md).

A third, ``"hsnet"`` (HSNet ``test.py``), is for logits that cover the whole label frame
(no canvas: query resized to a square without keeping the aspect): bilinear with
``align_corners=True`` to the label's size (the identity when HSNet scores at the square
itself). :func:`upsample_logits` adds the argmax; :func:`episode_confusions` scores a batch
of episodes under one or several protocols on the device without a host synchronisation.

References
----------
.. [1] Tian et al., PFENet, TPAMI 2020 (dvlab-research/PFENet ``test.py``,
       ``util/util.py intersectionAndUnionGPU``).
.. [2] Min et al., HSNet, ICCV 2021 (juhongm999/hsnet ``test.py``, ``model/hsnet.py
       predict_mask_nshot``, ``common/evaluation.py``, ``common/logger.py AverageMeter``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.fss.canvas import test_size

__all__ = ["DEFAULT_SCORING", "PROTOCOLS", "SCORINGS", "FewShotMeter", "episode_confusion", "episode_confusions",
           "intersection_union", "map_to_original", "pfenet_to_original", "scoring_pass",
           "summarise_seeds", "upsample_logits"]

IGNORE_INDEX = 255
PROTOCOLS = ("exact", "pfenet", "hsnet")  # how logits reach the label: see the module docstring

# The evaluator's scorings (``qgnet-eval fss --scoring``): name -> (the protocol above, what
# the number is). "pfenet" and "exact" score the same logits (PFENet's test canvas), so one
# pass gives both; "hsnet" and "hsnet-original" feed the network HSNet's 400 x 400 square
# and are a pass of their own (model.fss.transforms.hsnet_transform).
SCORINGS: dict[str, tuple[str, str]] = {
    "pfenet": ("pfenet", "PFENet test.py (ori_resize): comparable with the QGNet, PFENet and BAM tables"),
    "exact": ("exact", "exact inverse of the test resize (ours; not in the papers' tables)"),
    "hsnet": ("hsnet", "HSNet test.py: a square input (HSNet's 400 x 400), scored there against "
                       "the resized label"),
    "hsnet-original": ("hsnet", "HSNet test.py --use_original_imgsize: the square's logits "
                                "resized to the original label"),
}
DEFAULT_SCORING = "pfenet"


def scoring_pass(scoring: str) -> tuple[str, ...]:
    """The scorings computed in the same pass as ``scoring`` (its input is the same),
    ``scoring`` first: ``("pfenet", "exact")`` or ``("exact", "pfenet")`` on PFENet's
    canvas; ``("hsnet",)`` / ``("hsnet-original",)`` alone."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    if scoring in ("pfenet", "exact"):
        return (scoring, "exact" if scoring == "pfenet" else "pfenet")
    return (scoring,)
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

    def add(self, classes, confusions) -> FewShotMeter:
        """Add E episodes at once: ``classes`` (E,), ``confusions`` E x 2 x 2 (e.g. from
        :func:`episode_confusions`); returns self."""
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        conf = np.asarray(confusions, dtype=np.int64).reshape(-1, 2, 2)
        if len(classes) != len(conf):
            raise ValueError(f"{len(classes)} classes for {len(conf)} confusions")
        unknown = sorted(set(classes.tolist()) - set(self._row))
        if unknown:
            raise ValueError(f"classes {unknown} are not among this meter's classes {self.class_ids}")
        rows = np.array([self._row[int(c)] for c in classes], dtype=np.int64)
        np.add.at(self.confusion, rows, conf)
        np.add.at(self.episodes, rows, 1)
        return self

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
        """Mean of :meth:`per_class` over the classes with episodes (NaN before any episode).

        A class that drew no episode is left out: it carries no evidence about the model.
        PFENet's ``test.py`` and HSNet's ``AverageMeter`` divide by all the fold's classes
        instead (a missing class counts 0): :meth:`miou_all_classes`. The two agree whenever
        every class has an episode, as in any full-length PASCAL / COCO run."""
        ious = list(self.per_class().values())
        return float(np.mean(ious)) if ious else float("nan")

    def miou_all_classes(self) -> float:
        """PFENet's and HSNet's average: the sum of the class IoUs over *all* the meter's
        classes, a class without an episode counting 0 (NaN before any episode)."""
        if self.n_episodes == 0:
            return float("nan")
        return float(sum(self.per_class().values()) / len(self.class_ids))

    def fb_iou(self) -> float:
        """Mean of background and foreground IoU, each summed over all episodes."""
        c = self.confusion.sum(axis=0)  # 2 x 2
        if c.sum() == 0:
            return float("nan")
        fg = c[1, 1] / (c[1, 1] + c[0, 1] + c[1, 0] + _IOU_EPS)
        bg = c[0, 0] / (c[0, 0] + c[0, 1] + c[1, 0] + _IOU_EPS)
        return float((fg + bg) / 2)

    def summary(self) -> dict:
        """``{"miou", "fb_iou", "per_class", "episodes", "missing_classes",
        "miou_all_classes"}`` (JSON-ready; the last is PFENet's average, missing classes as
        0, equal to ``miou`` when none is missing)."""
        return {
            "miou": self.miou(),
            "fb_iou": self.fb_iou(),
            "per_class": {str(c): v for c, v in self.per_class().items()},
            "episodes": self.n_episodes,
            "missing_classes": self.missing_classes,
            "miou_all_classes": self.miou_all_classes(),
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


def map_to_original(maps: torch.Tensor, size: Sequence[int], *, crop: int | None = None) -> torch.Tensor:
    """Maps on the test canvas -> the original image grid: the inverse of ``test_transform``.

    ``test_transform`` resizes the H x W image to the block ``(nh, nw) = test_size(H, W, S)``
    (bilinear, half-pixel centres: block pixel i sits at original ``(i + 0.5) H / nh - 0.5``)
    at the top-left of an S x S canvas. The inverse:

    1. maps coarser than the canvas (feature-grid region maps, h' x w') are first brought to
       S x S the way the network upsamples its own outputs (bilinear, ``align_corners=True``);
    2. the block ``[:nh, :nw]`` is kept (the padding never reaches the original grid);
    3. the block is resized to H x W (bilinear, half-pixel centres, i.e.
       ``align_corners=False``), which puts every block pixel back where it came from.

    PFENet's ``ori_resize`` (:func:`pfenet_to_original`) resizes the whole S x S output to
    L x L (L = max(H, W), ``align_corners=True``) and scores it against the label padded
    with 255. That is this mapping up to less than one canvas pixel when the block's longer
    side is exactly S, but PFENet floors the block to a multiple of 8 (472 x 352 for
    500 x 375 at 473), which its scoring then reads as a shift of up to 8 canvas pixels;
    see docs/fss.md.

    Parameters
    ----------
    maps : Tensor, N x C x h x w
        Logits or region maps covering the S x S canvas (any resolution).
    size : (H, W)
        The original image size (the same for the N maps).
    crop : int, optional
        The canvas side S; default ``w`` (maps at the canvas resolution).

    Returns
    -------
    Tensor, float32, N x C x H x W
    """
    H, W = int(size[0]), int(size[1])
    S = int(crop) if crop is not None else int(maps.shape[-1])
    nh, nw = test_size(H, W, S)
    with torch.autocast(maps.device.type, enabled=False):
        m = maps.float()
        if tuple(m.shape[-2:]) != (S, S):  # 1
            m = F.interpolate(m, size=(S, S), mode="bilinear", align_corners=True)
        m = m[..., :nh, :nw]  # 2
        if (nh, nw) != (H, W):  # 3
            m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
    return m


def pfenet_to_original(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Maps on the test canvas -> the H x W label the way PFENet's ``test.py`` scores them.

    PFENet (``ori_resize: True``) pads the original label to L x L with 255 (L = max(H, W))
    and resizes the whole S x S output to L x L (bilinear, ``align_corners=True``); only the
    top-left H x W of that square meets labelled pixels, so it is returned here. Canvas
    pixel ``i`` lands at ``i (L - 1) / (S - 1)``, which stretches the image block
    ``test_size(H, W, S)`` (floored to a multiple of 8) by up to 8 canvas pixels.

    Parameters
    ----------
    maps : Tensor, N x C x S x S
        Logits on the test canvas (the network's output at the input size).
    size : (H, W)
        The original label size.

    Returns
    -------
    Tensor, float32, N x C x H x W
    """
    H, W = int(size[0]), int(size[1])
    L = max(H, W)
    with torch.autocast(maps.device.type, enabled=False):
        m = F.interpolate(maps.float(), size=(L, L), mode="bilinear", align_corners=True)  # N x C x L x L
    return m[..., :H, :W]


def _to_label(logits: torch.Tensor, size: Sequence[int], crop: int | None, protocol: str) -> torch.Tensor:
    """N x 2 x h x w logits -> N x 2 x H x W on the label grid under ``protocol``."""
    if protocol == "exact":
        return map_to_original(logits, size, crop=crop)
    if protocol == "pfenet":
        S = int(crop) if crop is not None else int(logits.shape[-1])
        if tuple(logits.shape[-2:]) != (S, S):
            raise ValueError(f"protocol 'pfenet' scores the network's S x S output (S = {S}), got "
                             f"logits {tuple(logits.shape[-2:])}")
        return pfenet_to_original(logits, size)
    if protocol == "hsnet":
        with torch.autocast(logits.device.type, enabled=False):
            return F.interpolate(logits.float(), size=(int(size[0]), int(size[1])), mode="bilinear",
                                 align_corners=True)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")


def upsample_logits(logits: torch.Tensor, size: Sequence[int], *, crop: int | None = None,
                    protocol: str = "exact") -> torch.Tensor:
    """Prediction at the label's resolution under a scoring protocol: logits -> label grid, argmax.

    Parameters
    ----------
    logits : Tensor, N x 2 x h x w
        ``"exact"`` / ``"pfenet"``: on the test canvas of
        :func:`model.fss.transforms.test_transform` (``"pfenet"``: the S x S output itself).
        ``"hsnet"``: covering the whole label frame (no canvas).
    size : (H, W)
        The label size (the original label; for HSNet's default scoring, the square label).
    crop : int, optional
        The canvas side S (default: ``w``).
    protocol : {"exact", "pfenet", "hsnet"}, default "exact"
        ``"exact"``: :func:`map_to_original` (the exact inverse of the test resize).
        ``"pfenet"``: :func:`pfenet_to_original` (PFENet ``test.py``, the protocol of the
        paper's tables). ``"hsnet"``: bilinear, ``align_corners=True``, to ``size`` (HSNet
        ``test.py``; with ``use_original_imgsize`` ``size`` is the original label's).

    Returns
    -------
    Tensor, long: H x W when N == 1, else N x H x W

    Examples
    --------
    A 375 x 500 label at crop 473 is a 352 x 472 block on the canvas. The block's last
    column (471) predicted foreground reaches the label's last column (499) under "exact";
    PFENet's L x L resize reads the block as 473 canvas pixels wide and stops a pixel short:

    >>> logits = torch.zeros(1, 2, 473, 473); logits[0, 1, :352, 471] = 1
    >>> [upsample_logits(logits, (375, 500), protocol=p)[100].nonzero().ravel().tolist()
    ...  for p in ("exact", "pfenet")]
    [[498, 499], [497, 498]]
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    pred = _to_label(logits, size, crop, protocol).argmax(dim=1)  # N x H x W
    return pred[0] if pred.shape[0] == 1 else pred


def episode_confusions(logits: torch.Tensor, labels: torch.Tensor, sizes, *, crop: int | None = None,
                       protocol: str | Sequence[str] = "exact",
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """2 x 2 confusion counts of a batch of episodes, on the logits' device, no host sync.

    Parameters
    ----------
    logits : Tensor, N x 2 x h x w (on the test canvas; ``"hsnet"``: covering the label frame)
    labels : Tensor, N x H' x W', labels (0 / 1 / ``ignore_index``) padded to the batch's
        largest size (``model.fss.data.collate``); episode j's label is the top-left
        ``sizes[j]``
    sizes : N x 2 (CPU tensor, array or list) of the label sizes (H, W)
    crop : int, optional
        Canvas side (default: ``w``).
    protocol : str or sequence of str, default "exact"
        One protocol of :data:`PROTOCOLS` (see :func:`upsample_logits`), or several scored
        in the same pass (the evaluator: ``("pfenet", "exact")``).

    Returns
    -------
    Tensor, int64, on ``logits.device``: N x 2 x 2 for one protocol, N x P x 2 x 2 for a
    sequence of P; ``C[j, t, p]`` as :func:`episode_confusion`.
    """
    names = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    for p in names:
        if p not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {p!r}")
    sizes = np.asarray(sizes.cpu() if isinstance(sizes, torch.Tensor) else sizes).reshape(-1, 2)
    labels = labels.to(logits.device)
    out = torch.zeros(len(sizes), len(names), 5, dtype=torch.int64, device=logits.device)
    for j, (h, w) in enumerate(sizes.tolist()):
        t = labels[j, :h, :w].long()
        ignored = t == ignore_index
        for k, p in enumerate(names):
            pred = upsample_logits(logits[j:j + 1], (h, w), crop=crop, protocol=p)  # H x W
            idx = torch.where(ignored, 4, t * 2 + pred).reshape(-1)  # 4: ignored pixel
            out[j, k].scatter_add_(0, idx, torch.ones_like(idx))
    conf = out[..., :4].reshape(len(sizes), len(names), 2, 2)
    return conf[:, 0] if isinstance(protocol, str) else conf


def intersection_union(confusion) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode (intersection, union) of background and foreground from confusions.

    ``confusion``: E x 2 x 2; returns two E x 2 int64 arrays, column 0 background, 1
    foreground (PFENet's ``intersectionAndUnion`` with 2 classes).
    """
    c = np.asarray(confusion, dtype=np.int64).reshape(-1, 2, 2)
    inter = np.stack([c[:, 0, 0], c[:, 1, 1]], axis=1)
    off = c[:, 0, 1] + c[:, 1, 0]
    union = inter + off[:, None]
    return inter, union
