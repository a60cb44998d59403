"""The device half of MoCo-v2 augmentation: flip, colour jitter, grayscale, blur and
normalisation of a whole batch of uint8 crops, with per-sample parameters, on the
training device (plain torch ops: CUDA, or CPU for tests).

The DataLoader workers run :class:`model.prior.augment.PairedCrop`: decode, crop, resize in
uint8, and draw every parameter of the view from the sample's seeded generator (so a
resumed run gets the same views). A batch then holds, per view ``v`` in ``q, k``::

    im_v   N x 3 x S x S uint8    crops, not yet flipped
    map_v  N x S x S int16        uint16 patch ids as int16 bits, not yet flipped
    aug_v  N x 12 float32         model.prior.augment.VIEW_PARAMS per sample

and :func:`batch_to_device` turns it into what the model eats (``im_v`` N x 3 x S x S
float32 normalised, ``map_v`` N x S x S int64), exactly as the CPU path
(:func:`model.prior.augment.photometric`) would for the same parameters, up to float
rounding (tested).

No host syncs: which samples take which jitter op at which position, and which are
flipped or blurred, is read from the *host* copy of ``aug_v`` (:func:`plan_views`) and
shipped as one index tensor with the batch; the device code only slices it with python
ints. Subsets are gathered, transformed and scattered back with ``index_select`` /
``index_copy``, so every sample pays only for the ops it draws.

:class:`DevicePrefetcher` overlaps the host-to-device copy of batch ``i + 1`` with step
``i`` (pinned memory, a side CUDA stream, ``non_blocking``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.prior.augment import MOCO_V2_AUGMENT, VIEW_PARAMS

_COL = {name: i for i, name in enumerate(VIEW_PARAMS)}
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
VIEWS = ("q", "k")


# ------------------------------------------------------------------ batched colour ops
def _gray(x: torch.Tensor) -> torch.Tensor:
    """n x 3 x H x W -> n x 1 x H x W luma (torchvision's weights)."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``clamp(f x + (1 - f) other, 0, 1)`` with ``f`` n x 1 x 1 x 1 (torchvision's _blend)."""
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)  # n x 1 x 1 x 1
    return _blend(x, mean, f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``f`` turns (n x 1 x 1 x 1, in [-0.5, 0.5]): RGB -> HSV, shift,
    -> RGB, as torchvision's ``adjust_hue`` on float tensors."""
    r, g, b = x.unbind(1)  # each n x H x W
    maxc = x.amax(1)
    minc = x.amin(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = torch.where(maxc == r, bc - gc,
                    torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = (h + f[:, 0]) % 1.0  # n x H x W hue in [0, 1)
    v = maxc
    h6 = h * 6.0
    i = torch.floor(h6)
    fr = h6 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * fr)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - fr))).clamp_(0.0, 1.0)
    # sector i: (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), 1)  # n x 18 x H x W
    idx = (torch.arange(3, device=x.device).view(1, 3, 1, 1) * 6 + i.unsqueeze(1)).long()
    return table.gather(1, idx)  # n x 3 x H x W


JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # JITTER_OPS order


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, *, radius: int) -> torch.Tensor:
    """Per-sample Gaussian blur of n x 3 x H x W with ``sigma`` (n), as torchvision's
    ``gaussian_blur(kernel 2 ceil(3 sigma) + 1, reflect padding)``: every sample's 1-D kernel
    is its own, zero beyond its half-width, on a common support of ``2 radius + 1`` taps
    (``radius`` >= the largest half-width; reflect padding by ``radius`` gives the same
    values inside each sample's support). Separable: rows then columns."""
    n, c, hh, ww = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # T
    half = torch.ceil(3.0 * sigma).unsqueeze(1)  # n x 1 (kernel 2 half + 1)
    pdf = torch.exp(-0.5 * (taps / sigma.unsqueeze(1)) ** 2) * (taps.abs() <= half)  # n x T
    kernel = pdf / pdf.sum(1, keepdim=True)  # n x T
    w = kernel.repeat_interleave(c, 0)  # (n c) x T
    y = F.pad(x.reshape(1, n * c, hh, ww), [radius] * 4, mode="reflect")
    y = F.conv2d(y, w.view(n * c, 1, 1, -1), groups=n * c)  # along W
    y = F.conv2d(y, w.view(n * c, 1, -1, 1), groups=n * c)  # along H
    return y.view(n, c, hh, ww)


# ------------------------------------------------------------------ the plan (host side)
@dataclass(frozen=True)
class ViewPlan:
    """Host-side bookkeeping of one view's batch: ``index`` (1-D int64, the concatenated
    sample lists) and the python ``(start, stop)`` slice of each list in it."""

    index: torch.Tensor
    flip: tuple[int, int]
    jitter: tuple[tuple[int, int], ...]  # 16 slices: position p, op k at 4 p + k
    gray: tuple[int, int]
    blur: tuple[int, int]
    radius: int  # half-width of the common blur support (0 = no blur in the batch)

    def to(self, device: torch.device, non_blocking: bool = False) -> ViewPlan:
        return ViewPlan(self.index.to(device, non_blocking=non_blocking), self.flip, self.jitter,
                        self.gray, self.blur, self.radius)

    def pin_memory(self) -> ViewPlan:
        return ViewPlan(self.index.pin_memory(), self.flip, self.jitter, self.gray, self.blur,
                        self.radius)


def plan_views(params: torch.Tensor) -> ViewPlan:
    """Which samples of ``params`` (N x 12 :data:`VIEW_PARAMS`, on the host) each op
    touches."""
    if params.device.type != "cpu":
        raise ValueError("plan_views needs the host copy of the parameters (a device copy "
                         "would cost a sync)")
    p = params.numpy() if params.dtype == torch.float32 else params.float().numpy()
    lists, at = [], 0

    def add(mask) -> tuple[int, int]:
        nonlocal at
        idx = mask.nonzero()[0]
        lists.append(idx)
        start, at = at, at + len(idx)
        return start, at

    flip = add(p[:, _COL["flip"]] > 0.5)
    jit = p[:, _COL["jitter"]] > 0.5
    order = p[:, _COL["order0"]:_COL["order3"] + 1].round().astype(int)  # N x 4
    jitter = tuple(add(jit & (order[:, pos] == k)) for pos in range(4) for k in range(4))
    gray = add(p[:, _COL["gray"]] > 0.5)
    sig = p[:, _COL["sigma"]]
    blur = add(sig > 0)
    radius = int(math.ceil(3.0 * float(sig.max()))) if len(sig) and sig.max() > 0 else 0
    index = torch.from_numpy(np.concatenate(lists).astype(np.int64))
    return ViewPlan(index, flip, jitter, gray, blur, radius)


# ------------------------------------------------------------------ the device side
def _apply(x: torch.Tensor, idx: torch.Tensor, fn) -> torch.Tensor:
    """``x[idx] = fn(x[idx])`` without a boolean mask (no host sync)."""
    return x.index_copy_(0, idx, fn(x.index_select(0, idx)))


def augment_views(images: torch.Tensor, maps: torch.Tensor, params: torch.Tensor,
                  plan: ViewPlan, *, mean=MOCO_V2_AUGMENT["mean"], std=MOCO_V2_AUGMENT["std"],
                  channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, jitter, grayscale, blur and normalise one view of a batch on its device.

    Parameters
    ----------
    images : N x 3 x S x S uint8 tensor
        Crops from :class:`~model.prior.augment.PairedCrop` (any device).
    maps : N x S x S int16 tensor
        Their patch maps (uint16 ids as int16 bits).
    params : N x 12 float32 tensor
        :data:`~model.prior.augment.VIEW_PARAMS`, on the images' device.
    plan : ViewPlan
        :func:`plan_views` of the same parameters, its index on the images' device.
    mean, std : ImageNet normalisation.
    channels_last : return the images in channels_last memory format.

    Returns
    -------
    images : N x 3 x S x S float32, normalised
    maps : N x S x S int64 patch ids (0 = none)
    """
    ix = plan.index

    def sl(a_b: tuple[int, int]) -> torch.Tensor | None:
        a, b = a_b
        return ix[a:b] if b > a else None

    maps = maps.to(torch.int64) & 0xFFFF  # N x S x S ids back from int16 bits
    x = images.float().div_(255.0)  # N x 3 x S x S in [0, 1]
    idx = sl(plan.flip)
    if idx is not None:
        _apply(x, idx, lambda t: t.flip(-1))
        maps = _apply(maps, idx, lambda t: t.flip(-1))
    factors = params[:, _COL["brightness"]:_COL["hue"] + 1]  # N x 4
    for pos in range(4):
        for k, op in enumerate(JITTER):
            idx = sl(plan.jitter[4 * pos + k])
            if idx is not None:
                f = factors.index_select(0, idx)[:, k].view(-1, 1, 1, 1)  # n x 1 x 1 x 1
                _apply(x, idx, lambda t, f=f, op=op: op(t, f))
    idx = sl(plan.gray)
    if idx is not None:
        _apply(x, idx, lambda t: _gray(t).expand(-1, 3, -1, -1))
    idx = sl(plan.blur)
    if idx is not None:
        sigma = params[:, _COL["sigma"]].index_select(0, idx)  # n
        _apply(x, idx, lambda t: gaussian_blur(t, sigma, radius=plan.radius))
    for c in range(3):  # python scalars: a device tensor built from a list would be a copy
        x[:, c].sub_(mean[c]).div_(std[c])  # (x - mean) / std, N x S x S per channel
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt), maps


def is_device_batch(batch: dict[str, torch.Tensor]) -> bool:
    """True for a batch of the device path (uint8 crops + ``aug_q``/``aug_k``)."""
    return "aug_q" in batch


def host_plans(batch: dict) -> dict:
    """Add ``plan_q``/``plan_k`` (:class:`ViewPlan`) to a host batch of the device path
    (idempotent); other batches are returned unchanged."""
    if is_device_batch(batch) and "plan_q" not in batch:
        batch = dict(batch)
        for v in VIEWS:
            batch[f"plan_{v}"] = plan_views(batch[f"aug_{v}"])
    return batch


MODEL_KEYS = ("im_", "map_", "aug_", "plan_")  # what the step needs on the device


def copy_to_device(batch: dict, device: torch.device, *, non_blocking: bool = True) -> dict:
    """The model's inputs of ``batch`` (:data:`MODEL_KEYS`) on ``device``; bookkeeping
    (``index``, ``row``, ``skipped``) stays on the host, so reading it costs no sync. Plans
    are computed first, from the host copy of the parameters."""
    batch = host_plans(batch)
    pin = non_blocking and device.type == "cuda"
    out = {}
    for key, val in batch.items():
        if key.startswith(MODEL_KEYS) and isinstance(val, (torch.Tensor, ViewPlan)):
            if pin and isinstance(val, ViewPlan) and val.index.device.type == "cpu":
                val = val.pin_memory()
            val = val.to(device, non_blocking=non_blocking)
        out[key] = val
    return out


def batch_to_device(batch: dict, device: torch.device, *, channels_last: bool = False) -> dict:
    """Step 1 of the prior training step: the model's inputs on ``device``.

    Returns ``{"im_q", "im_k"}`` N x 3 x S x S float (``channels_last`` if asked) and
    ``{"map_q", "map_k"}`` N x S x S int64, plus every other key of ``batch`` as is (on
    the host).
    A batch of the device path (:func:`is_device_batch`) is augmented here; a batch of the
    CPU path is only moved. Tensors already on ``device`` are not copied (a batch from
    :class:`DevicePrefetcher`).
    """
    batch = copy_to_device(batch, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {k: v for k, v in batch.items() if not k.startswith(("plan_", "aug_"))}
    for v in VIEWS:
        if is_device_batch(batch):
            out[f"im_{v}"], out[f"map_{v}"] = augment_views(
                batch[f"im_{v}"], batch[f"map_{v}"], batch[f"aug_{v}"], batch[f"plan_{v}"],
                channels_last=channels_last)
        else:
            out[f"im_{v}"] = batch[f"im_{v}"].contiguous(memory_format=fmt)
    return out


class DevicePrefetcher:
    """Iterate ``loader`` with every batch already on ``device``, the copy of the next batch
    issued before the caller's current step runs.

    On CUDA the copies go on a side stream from pinned memory (``non_blocking``); the main
    stream waits on that stream's event before it uses the batch, and the tensors are marked
    as used by the main stream so the caching allocator does not recycle them early. On CPU
    it only computes the plans ahead. Device-path batches are *not* augmented here (that is
    :func:`batch_to_device`, on the main stream, inside the step).
    """

    def __init__(self, loader: Iterable[dict], device: torch.device):
        self.loader = loader
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __iter__(self) -> Iterator[dict]:
        it = iter(self.loader)
        nxt = self._load(it)
        while nxt is not None:
            batch, event = nxt
            nxt = self._load(it)  # issue the next copy before handing this batch out
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
                cur = torch.cuda.current_stream(self.device)
                for v in batch.values():  # bookkeeping tensors stay on the host
                    t = v.index if isinstance(v, ViewPlan) else v
                    if isinstance(t, torch.Tensor) and t.is_cuda:
                        t.record_stream(cur)
            yield batch

    def _load(self, it) -> tuple[dict, object] | None:
        try:
            batch = next(it)
        except StopIteration:
            return None
        if self.stream is None:
            return host_plans(batch), None
        with torch.cuda.stream(self.stream):
            batch = copy_to_device(batch, self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return batch, event
