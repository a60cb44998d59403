"""Geometry of the test canvas, shared by the test transform and the scoring (a leaf module).

``model.fss.transforms.test_transform`` puts an H x W image at the top-left of an S x S
canvas as a ``test_size(H, W, S)`` block; ``model.fss.metrics.map_to_original`` inverts it.
Both read the block size from here, so the two can never disagree.
"""
from __future__ import annotations

TEST_MULTIPLE = 8  # PFENet ``find_new_hw`` floors both sides to a multiple of 8


def test_size(h: int, w: int, size: int, *, multiple: int = TEST_MULTIPLE) -> tuple[int, int]:
    """Size of the image block on the test canvas (PFENet ``Resize``'s ``find_new_hw``).

    The longer side becomes ``size`` (larger and smaller images alike), the shorter
    ``int(side * size / longer)``; both are then floored to a multiple of ``multiple``
    (never below 1 pixel).

    >>> test_size(375, 500, 473), test_size(97, 131, 473), test_size(473, 473, 473)
    ((352, 472), (344, 472), (472, 472))
    """
    h, w, size = int(h), int(w), int(size)
    if h >= w:
        nh, nw = size, int(w * size / h)
    else:
        nh, nw = int(h * size / w), size

    def floor(n: int) -> int:
        return max(n - n % multiple if n >= multiple else n, 1)

    return floor(nh), floor(nw)
