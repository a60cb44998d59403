"""Local patches as the paper writes them: crops of each view around a superpixel.

QGNet section 4.1.2 samples "one query patch" and encodes it to ``q_p``; its positive
``k_p0`` is "a different view from the same patch"; Figure 3 feeds "two additional local
patches as input". Read literally (``qgnet-train prior --local-patches crop``): for each
sampled superpixel, its bounding box in the query view and its bounding box in the key
view are cropped from the two views and resized to a fixed ``size x size``; the query
encoder encodes the first, the key encoder the second, as separate inputs (docs/prior.md,
"Two readings of the local patches"). Taken on the training device inside the step, from
the batch's views and patch maps: the loader is the pooled mode's.

Both functions are pure tensor code without host syncs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_boxes(patch_map: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of the sampled superpixels in one view.

    Parameters
    ----------
    patch_map : Tensor, N x H x W int
        Superpixel ids of the view (0 = none).
    ids, valid : Tensor, N x P (int64, bool)
        From :func:`model.prior.patches.sample_patch_ids`.

    Returns
    -------
    Tensor, N x P x 4 int64
        ``(top, left, bottom, right)``, inclusive pixel indices of the smallest box holding
        every pixel of the patch; the whole view for an invalid slot (or an id absent from
        the map).

    Examples
    --------
    >>> m = torch.tensor([[[0, 1, 1, 0], [0, 1, 2, 2], [3, 3, 2, 2]]])
    >>> patch_boxes(m, torch.tensor([[1, 2]]), torch.tensor([[True, True]])).tolist()
    [[[0, 1, 1, 2], [1, 2, 2, 3]]]
    """
    n, h, w = patch_map.shape
    p = ids.shape[1]
    pm = patch_map.long()
    rows = torch.arange(h, device=pm.device)
    cols = torch.arange(w, device=pm.device)
    out = []
    for j in range(p):  # P is small (1 in the paper's reading); one N x H x W compare each
        hit = (pm == ids[:, j].view(n, 1, 1)) & valid[:, j].view(n, 1, 1)  # hit: N x H x W
        any_row = hit.any(dim=2)  # any_row: N x H
        any_col = hit.any(dim=1)  # any_col: N x W
        found = any_row.any(dim=1)  # found: N
        top = torch.where(found, torch.where(any_row, rows, h).amin(dim=1), 0)  # absent: whole view
        bottom = torch.where(found, torch.where(any_row, rows, -1).amax(dim=1), h - 1)
        left = torch.where(found, torch.where(any_col, cols, w).amin(dim=1), 0)
        right = torch.where(found, torch.where(any_col, cols, -1).amax(dim=1), w - 1)
        out.append(torch.stack([top, left, bottom, right], dim=1))  # N x 4
    return torch.stack(out, dim=1) if out else torch.zeros(n, 0, 4, dtype=torch.long,
                                                            device=pm.device)


def crop_patches(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each box from its image and resize it to ``size x size``.

    Crop ``[n, p]`` equals ``F.interpolate(images[n:n+1, :, top:bottom+1, left:right+1],
    (size, size), mode="bilinear", align_corners=False)``: bilinear at pixel centres, edge
    pixels of the box repeated, nothing outside the box read, no antialiasing. Done as one
    ``grid_sample`` per batch (no N x P copy of the images).

    Parameters
    ----------
    images : Tensor, N x C x H x W float
    boxes : Tensor, N x P x 4 int64
        From :func:`patch_boxes`.
    size : int

    Returns
    -------
    Tensor, N x P x C x size x size (the images' dtype)
    """
    n, c, h, w = images.shape
    p = boxes.shape[1]
    if p == 0:
        return images.new_zeros(n, 0, c, size, size)
    b = boxes.to(torch.float32)
    top, left, bottom, right = b.unbind(dim=-1)  # each: N x P
    t = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size  # t: size

    def source(start, end, extent):  # pixel coordinate of each output sample: N x P x size
        length = (end - start + 1).unsqueeze(-1)
        rel = (t * length - 0.5).clamp_min(0)  # F.interpolate's align_corners=False rule
        rel = torch.minimum(rel, length - 1)  # the last pixel repeats (upsampling)
        pix = start.unsqueeze(-1) + rel
        return (2 * pix + 1) / extent - 1  # grid_sample's normalised coordinate

    gy = source(top, bottom, h)  # gy: N x P x size
    gx = source(left, right, w)  # gx: N x P x size
    grid = torch.stack([gx.unsqueeze(2).expand(n, p, size, size),
                        gy.unsqueeze(3).expand(n, p, size, size)], dim=-1)  # N x P x s x s x 2
    grid = grid.permute(0, 2, 1, 3, 4).reshape(n, size, p * size, 2)  # patches side by side
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # out: N x C x size x P*size
    out = out.view(n, c, size, p, size).permute(0, 3, 1, 2, 4)  # out: N x P x C x size x size
    return out.to(images.dtype).contiguous()
