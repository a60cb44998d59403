"""Superpixel metrics: known answers and a hand-computed example."""

import numpy as np
import pytest

from pipeline.superpixels.metrics import (
    achievable_segmentation_accuracy as asa,
)
from pipeline.superpixels.metrics import (
    boundary_map,
    boundary_recall,
    is_connected,
    label_agreement,
)
from pipeline.superpixels.metrics import (
    undersegmentation_error as ue,
)


def two_halves(h=6, w=8):
    gt = np.zeros((h, w), np.int32)
    gt[:, w // 2:] = 1
    return gt


def test_identical_labels_are_perfect():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 1]])
    assert boundary_recall(gt, gt) == 1.0
    assert ue(gt, gt) == 0.0
    assert asa(gt, gt) == 1.0
    assert label_agreement(gt, gt) == pytest.approx(1.0)
    assert label_agreement(gt, gt + 7, method="asa") == 1.0  # renaming does not matter


def test_single_segment():
    gt = np.zeros((4, 5), np.int32)
    gt[:, :2] = 1  # class 1: 8 of 20 pixels, class 0: 12
    one = np.ones_like(gt)
    assert asa(one, gt) == pytest.approx(12 / 20)  # the largest class share
    assert boundary_recall(one, gt, tolerance=1) == 0.0
    # the one superpixel pays min(8, 12) for class 1 and min(12, 8) for class 0
    assert ue(one, gt) == pytest.approx((8 + 8) / 20)


def test_hand_computed_example():
    # gt: left 4 columns class 0, right 4 columns class 1 (6x8, N=48)
    # superpixels: A = columns 0-2 (18 px, all class 0), B = columns 3-5 (18 px: 6 of
    # class 0, 12 of class 1), C = columns 6-7 (12 px, class 1)
    gt = two_halves()
    sp = np.zeros((6, 8), np.int32)
    sp[:, 3:6] = 1
    sp[:, 6:] = 2
    # ASA: A 18 + B 12 + C 12 = 42
    assert asa(sp, gt) == pytest.approx(42 / 48)
    # UE: class 0 meets A (min(18, 0)) and B (min(6, 12)); class 1 meets B (min(12, 6))
    # and C (min(12, 0)): (6 + 6) / 48
    assert ue(sp, gt) == pytest.approx(12 / 48)
    # GT boundary: columns 3 and 4 (12 px). SP boundary: columns 2,3,5,6.
    assert boundary_recall(sp, gt, tolerance=0) == pytest.approx(6 / 12)  # column 3 only
    assert boundary_recall(sp, gt, tolerance=1) == 1.0  # column 4 sees 3 and 5


def test_boundary_map_and_default_tolerance():
    gt = two_halves()
    b = boundary_map(gt)
    assert b[:, 3].all() and b[:, 4].all() and b.sum() == 12
    # default r = round(0.0025 * diagonal): 0 for this tiny image, so shifted by 1 misses
    shifted = np.zeros_like(gt)
    shifted[:, 5:] = 1
    assert boundary_recall(shifted, gt) == pytest.approx(0.5)
    big = np.zeros((480, 640), np.int32)
    big[:, 320:] = 1
    moved = np.zeros_like(big)
    # GT boundary columns 319, 320; r = round(0.0025 * 800) = 2
    moved[:, 322:] = 1  # SP boundary 321, 322: both GT columns within 2
    assert boundary_recall(moved, big) == 1.0
    moved[:, :] = 0
    moved[:, 323:] = 1  # SP boundary 322, 323: only column 320 is within 2
    assert boundary_recall(moved, big) == pytest.approx(0.5)


def test_ignore_label():
    gt = two_halves()
    gt[:, 4] = 255  # a void column between the classes
    sp = np.zeros_like(gt)
    sp[:, 4:] = 1
    # with ignore: no valid boundary pairs -> nothing to recall
    assert boundary_recall(sp, gt, ignore=255) == 1.0
    assert asa(sp, gt, ignore=255) == 1.0  # the void column is not counted
    assert ue(sp, gt, ignore=255) == 0.0
    assert asa(sp, gt) < 1.0


def test_label_agreement_ari():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (50, 50))
    b = rng.integers(0, 5, (50, 50))
    assert abs(label_agreement(a, b)) < 0.02  # independent -> about 0
    with pytest.raises(ValueError, match="unknown method"):
        label_agreement(a, b, method="nmi")


def test_is_connected():
    lab = np.array([[1, 1, 2], [2, 2, 2], [1, 3, 3]])
    assert not is_connected(lab)  # label 1 appears in two places
    assert is_connected(np.array([[1, 1, 2], [3, 3, 2]]))
    assert not is_connected(np.array([[1, 2], [2, 1]]))  # diagonal only: not 4-connected


def test_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        asa(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer"):
        ue(np.zeros((3, 3)), np.zeros((3, 3), int))
