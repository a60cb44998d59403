"""Which superpixels the local loss uses: the size window and the slot filling (issue 18 §4).

:func:`model.prior.patches.sample_patch_ids` draws, per image, up to ``P`` ids seen in
both views whose area lies in a window ``[min_pixels, max_pixels]`` in *each* view. This
module holds the defaults of that window and the filling of the slots an image cannot
fill with distinct ids.

**The window.** Defaults, for an S x S view and an h x w feature grid (cell = S^2 / (h w)
pixels, 1,024 at 224 / stride 32):

- ``min_pixels`` = an eighth of a cell (128 px at 224): the pooled mode's soft masks pool
  a patch smaller than a cell from the cells it touches; the crop mode crops its bounding
  box. (Before issue 18 §4: half a cell, 512 px.)
- ``max_pixels`` = a sixteenth of the view (3,136 px at 224): a patch is a part of the
  view, not a second global view. Felzenszwalb leaves a few huge segments (sky, road,
  flat background) that otherwise dominate the pixels the local loss sees.

With these and Felzenszwalb at scale 100 / min_size 100, the patches the loss uses are
SLIC-100's larger ones on CamVid and on the demo, as the paper's Figure 4 says
(``bench/patch_area.py``, docs/prior.md "Patch regime").

**Slot filling** (``fill="repeat"``): an image with fewer usable ids than ``P`` slots fills
the rest with copies of its own usable patches, drawn uniformly, as DetCon's categorical
draw of mask ids with replacement does; every image then weighs ``P`` slots in the local
loss whatever its superpixel count, so SLIC and Felzenszwalb runs fill the same number of
slots. ``fill="none"``: empty slots stay empty (weight 0), the behaviour before issue 18.
"""
from __future__ import annotations

import torch

FILLS = ("repeat", "none")


def default_window(view_hw: tuple[int, int], feat_hw: tuple[int, int]) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` for a view of ``view_hw`` pixels and a feature grid of
    ``feat_hw`` cells: an eighth of a cell and a sixteenth of the view.

    >>> default_window((224, 224), (7, 7))
    (128, 3136)
    """
    view = int(view_hw[0]) * int(view_hw[1])
    cell = view / (int(feat_hw[0]) * int(feat_hw[1]))
    return max(1, int(cell // 8)), max(1, view // 16)


def fill_slots(valid: torch.Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the empty slots of each row with copies of its filled ones (uniform draw).

    Parameters
    ----------
    valid : Tensor, N x P bool
        From :func:`~model.prior.patches.sample_patch_ids`: the filled slots of a row come
        first (its ids are sorted by their random score).
    generator : torch.Generator, optional

    Returns
    -------
    source : Tensor, N x P int64
        Slot ``p`` of row ``n`` shows the patch of slot ``source[n, p]`` (``p`` itself for a
        filled slot; one of the row's filled slots, uniformly, for an empty one; 0 in a row
        with no filled slot).
    filled : Tensor, N x P bool
        Every slot of a row with at least one usable id.

    Nothing is read back to the host.

    Examples
    --------
    >>> src, ok = fill_slots(torch.tensor([[True, True, False, False], [False] * 4]))
    >>> src[0, :2].tolist(), bool((src[0, 2:] < 2).all()), ok.tolist()
    ([0, 1], True, [[True, True, True, True], [False, False, False, False]])
    """
    n, p = valid.shape
    count = valid.sum(dim=1, keepdim=True)  # count: N x 1 usable slots
    gdev = generator.device if generator is not None else valid.device
    u = torch.rand(n, p, generator=generator, device=gdev).to(valid.device)  # u: N x P in [0, 1)
    pick = (u * count).long().clamp_max((count - 1).clamp_min(0))  # pick: N x P in [0, count)
    own = torch.arange(p, device=valid.device).expand(n, p)
    source = torch.where(valid, own, pick)
    return source, (count > 0).expand(n, p)
