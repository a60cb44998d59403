"""Superpixel patches for local contrast: sample ids seen in both views, mask-pool features.

DetCon-style region pooling with precomputed masks (here: superpixels). For each image we
sample up to ``num`` superpixel ids that are visible in *both* augmented views, turn each
into a soft mask at feature resolution (the fraction of each feature cell the superpixel
covers) and average the feature cells with those weights.

Visibility threshold: a superpixel counts as visible in a view when it covers at least
``min_pixels`` pixels of that view; :class:`~model.prior.moco.PriorMoCo` uses half a feature
cell (``stride**2 / 2`` pixels, 512 for ResNet layer4 at stride 32 on 224 crops), i.e. its
soft mask at feature resolution sums to at least half a cell, about what a mask needs to
win DetCon's per-cell argmax. A whole cell (1,024 pixels) is too strict for SLIC-100 maps:
measured on three scikit-image photos x 30 MoCo-v2 view pairs, it leaves 10.5-12.6 usable
superpixels per pair (16 available in 7-23 % of pairs), half a cell leaves 19.6-22.2 (63-83 %).

References
----------
.. [1] Hénaff et al., "Efficient Visual Pretraining with Contrastive Detection" (DetCon),
       ICCV 2021 (deepmind/detcon): 16 mask ids per image, positives = same id in the
       other view. DetCon takes the argmax of the downsampled one-hot masks; we keep the
       fractions (a soft mask), so a superpixel smaller than a cell still contributes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_patch_ids(
    map_q: torch.Tensor,
    map_k: torch.Tensor,
    num: int = 16,
    *,
    min_pixels: int = 512,
    generator: torch.Generator | None = None,
    max_id: int | None = None,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample, per image, up to ``num`` superpixel ids visible in both views.

    Parameters
    ----------
    map_q, map_k : Tensor, N x H x W int
        Superpixel ids of the two views (1..n; 0 = no superpixel / padding, never sampled).
    num : int, default 16
        Patches per image (DetCon's 16).
    min_pixels : int, default 512
        An id is eligible when it covers at least this many pixels in *each* view
        (default: half a 32 x 32 feature cell; :class:`~model.prior.moco.PriorMoCo` passes
        half its actual cell area).
    generator : torch.Generator, optional
        Source of randomness (ids are drawn uniformly without replacement among the
        eligible ones); on its own device, results moved to the maps' device.
    max_id : int, optional
        The largest id in the two maps, known on the host (the loader's collate computes
        it on CPU): no host-device sync. Ids above it are treated as 0 (never sampled).
        Default: read ``max(map_q.max(), map_k.max())`` from the device (one sync, and one
        more to check that no id is negative). Given the true maximum, the result is
        identical to the default's (same random draws).
    max_pixels : int, optional
        Ids covering more than this in either view are not eligible either (the window of
        :mod:`model.prior.patch_rule`); ``None``: no upper bound.

    Returns
    -------
    ids : Tensor, N x num int64
        Sampled ids, in random order; padding entries are 0.
    valid : Tensor, N x num bool
        False where an image had fewer than ``num`` eligible ids.

    Examples
    --------
    >>> m = torch.tensor([[[1, 1, 2, 2]] * 4])  # 1 x 4 x 4: two ids of 8 pixels
    >>> ids, valid = sample_patch_ids(m, m, num=3, min_pixels=8)
    >>> sorted(ids[0][valid[0]].tolist()), valid.tolist()
    ([1, 2], [[True, True, False]])
    """
    if map_q.shape != map_k.shape or map_q.dim() != 3:
        raise ValueError(f"expected two N x H x W maps of one shape, got {tuple(map_q.shape)} and "
                         f"{tuple(map_k.shape)}")
    n = map_q.shape[0]
    device = map_q.device
    map_q = map_q.long()
    map_k = map_k.long()
    if n == 0 or num == 0:
        return (torch.zeros(n, num, dtype=torch.long, device=device),
                torch.zeros(n, num, dtype=torch.bool, device=device))
    if max_id is None:
        m = int(torch.maximum(map_q.max(), map_k.max())) + 1  # ids 0..m-1 (syncs)
        if int(torch.minimum(map_q.min(), map_k.min())) < 0:
            raise ValueError("superpixel ids must be >= 0 (0 = no superpixel)")
    else:  # no sync: out-of-range ids (negative or above max_id) become 0 = none
        m = int(max_id) + 1
        map_q = torch.where((map_q < 0) | (map_q >= m), 0, map_q)
        map_k = torch.where((map_k < 0) | (map_k >= m), 0, map_k)
    count_q = count_ids(map_q, m)  # count_q: N x m pixels per id
    count_k = count_ids(map_k, m)  # count_k: N x m
    eligible = (count_q >= min_pixels) & (count_k >= min_pixels)  # eligible: N x m
    if max_pixels is not None:
        eligible &= (count_q <= max_pixels) & (count_k <= max_pixels)
    eligible[:, 0] = False
    gdev = generator.device if generator is not None else device
    score = torch.rand(n, m, generator=generator, device=gdev).to(device)  # score: N x m in [0, 1)
    score = torch.where(eligible, score, torch.full_like(score, -1.0))
    if m < num:  # fewer ids than slots: pad the score table with ineligible columns
        score = F.pad(score, (0, num - m), value=-1.0)
    top, ids = score.topk(num, dim=1)  # top, ids: N x num (highest random score first)
    valid = top >= 0
    ids = torch.where(valid, ids, torch.zeros_like(ids))
    return ids, valid


def count_ids(maps: torch.Tensor, m: int) -> torch.Tensor:
    """Pixels per id of each map: ``maps`` N x H x W int64 with ids in ``0..m-1`` -> N x m
    int32 counts.

    One ``scatter_add_`` into a buffer whose length ``N m`` is known on the host: no host
    sync. (``torch.bincount`` gives the same counts but on CUDA it reads ``maps.max()``
    back to size its output, even with ``minlength``: one sync per call.) int32 holds any
    map up to 46,000 x 46,000 pixels and uses the GPU's native atomics.
    """
    n = maps.shape[0]
    offset = (torch.arange(n, device=maps.device) * m).view(n, 1, 1)  # offset: N x 1 x 1
    flat = (maps + offset).flatten()  # flat: N H W, in 0..N m - 1
    counts = torch.zeros(n * m, dtype=torch.int32, device=maps.device)
    counts.scatter_add_(0, flat, torch.ones(1, dtype=torch.int32, device=maps.device)
                        .expand_as(flat))
    return counts.view(n, m)


def patch_masks(
    patch_map: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Soft masks of the sampled patches at feature resolution.

    One-hot masks of ``ids`` (N x num x H x W) area-downsampled to ``size``: entry
    ``[n, p, y, x]`` is the fraction of feature cell ``(y, x)`` covered by patch ``p``
    (``F.adaptive_avg_pool2d`` cells). Invalid patches give all-zero masks.

    Parameters
    ----------
    patch_map : Tensor, N x H x W int
    ids, valid : Tensor, N x num (int64, bool)
        From :func:`sample_patch_ids`.
    size : (h, w)
        Feature resolution.

    Returns
    -------
    Tensor, N x num x h x w float32
    """
    n, H, W = patch_map.shape
    num = ids.shape[1]
    h, w = int(size[0]), int(size[1])
    # Slot of every pixel: p where patch_map == ids[:, p] (valid), else num ("not sampled").
    slot = torch.full((n, H, W), num, dtype=torch.long, device=patch_map.device)  # slot: N x H x W
    pm = patch_map.long()
    for p in range(num):  # num is small (16); one N x H x W compare each, no N x num x H x W bool
        hit = (pm == ids[:, p].view(n, 1, 1)) & valid[:, p].view(n, 1, 1)
        slot = torch.where(hit, torch.full_like(slot, p), slot)
    if H % h == 0 and W % w == 0:
        # Fast path (224 -> 7): count pixels per (slot, cell) with one scatter, O(N H W) memory.
        sh, sw = H // h, W // w
        rows = torch.arange(H, device=pm.device) // sh  # rows: H
        cols = torch.arange(W, device=pm.device) // sw  # cols: W
        cell = (rows.view(H, 1) * w + cols.view(1, W)).expand(n, H, W)  # cell: N x H x W
        index = (slot * (h * w) + cell).reshape(n, H * W)  # index: N x HW into (num+1) * h * w
        counts = torch.zeros(n, (num + 1) * h * w, device=pm.device)
        counts.scatter_add_(1, index, torch.ones(n, H * W, device=pm.device))
        masks = counts.view(n, num + 1, h, w)[:, :num] / float(sh * sw)  # masks: N x num x h x w
    else:
        # General path: one-hot at full resolution, then area pooling.
        onehot = F.one_hot(slot, num + 1)[..., :num].permute(0, 3, 1, 2).float()  # N x num x H x W
        masks = F.adaptive_avg_pool2d(onehot, (h, w))  # masks: N x num x h x w
    return masks


def pool_with_masks(fmap: torch.Tensor, masks: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Mask-weighted average of feature cells: ``sum_yx m f / sum_yx m`` (0 for empty masks).

    ``fmap``: N x C x h x w, ``masks``: N x num x h x w -> N x num x C (float32).
    """
    fmap = fmap.float()
    masks = masks.float()
    pooled = torch.einsum("nphw,nchw->npc", masks, fmap)  # pooled: N x num x C
    area = masks.sum(dim=(2, 3)).unsqueeze(-1)  # area: N x num x 1
    return pooled / area.clamp_min(eps)  # empty masks: 0 / eps = 0


def pool_patches(
    fmap: torch.Tensor, patch_map: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mask-average-pool features per sampled superpixel patch (DetCon's region pooling).

    Parameters
    ----------
    fmap : Tensor, N x C x h x w
        Features (e.g. ResNet layer4, 7 x 7 for 224 crops).
    patch_map : Tensor, N x H x W int
        Superpixel ids of the same view at image resolution.
    ids, valid : Tensor, N x num
        From :func:`sample_patch_ids`.

    Returns
    -------
    Tensor, N x num x C float32
        Weighted average of the feature cells, weights = fraction of each cell covered by
        the patch; zeros for invalid patches.

    Examples
    --------
    >>> pm = torch.tensor([[[1, 1, 2, 2]] * 4]); f = torch.arange(2.).view(1, 1, 1, 2)
    >>> pool_patches(f, pm, torch.tensor([[2, 1]]), torch.tensor([[True, True]])).flatten().tolist()
    [1.0, 0.0]
    """
    masks = patch_masks(patch_map, ids, valid, fmap.shape[-2:])  # masks: N x num x h x w
    return pool_with_masks(fmap, masks)
