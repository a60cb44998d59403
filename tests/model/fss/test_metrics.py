"""Tests for model/fss/metrics.py and model/fss/regions.py against hand-computed counts."""

import json
import math

import numpy as np
import pytest
import torch

from model.fss.metrics import (
    FewShotMeter,
    episode_confusion,
    episode_confusions,
    intersection_union,
    summarise_seeds,
    upsample_logits,
)
from model.fss.regions import RegionMeter, region_counts, region_recall

# Four episodes over classes 1 and 2 (class 3 has none). C[t, p] counts by hand:
EPISODES = [
    # class 1: one hit, one false positive, one miss, one ignored pixel -> C = [[2, 1], [1, 1]], I 1, U 3
    (1, [[1, 1, 0], [0, 0, 0]], [[1, 0, 0], [1, 255, 0]]),
    # class 1: empty prediction -> C = [[4, 0], [2, 0]], I 0, U 2
    (1, [[0, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 0]]),
    # class 2: empty target, one false positive -> C = [[5, 1], [0, 0]], I 0, U 1
    (2, [[1, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]),
    # class 2: perfect, the predicted-fg pixel under 255 is ignored -> C = [[2, 0], [0, 3]], I 3, U 3
    (2, [[1, 1, 1], [0, 0, 1]], [[1, 1, 1], [0, 0, 255]]),
]
CONFUSIONS = [[[2, 1], [1, 1]], [[4, 0], [2, 0]], [[5, 1], [0, 0]], [[2, 0], [0, 3]]]
CLASS_IOU = {1: (1 + 0) / (3 + 2), 2: (0 + 3) / (1 + 3)}  # sums over each class's episodes
# all episodes together: C = [[13, 2], [3, 4]] -> fg 4 / 9, bg 13 / 18
FB_IOU = (4 / 9 + 13 / 18) / 2


def _filled(episodes=EPISODES, classes=(1, 2, 3)):
    meter = FewShotMeter(classes)
    for cls, pred, target in episodes:
        meter.update(cls, np.array(pred), np.array(target))
    return meter


def test_episode_confusion_numpy_and_torch():
    for (_, pred, target), expect in zip(EPISODES, CONFUSIONS, strict=True):
        np.testing.assert_array_equal(episode_confusion(np.array(pred), np.array(target)), expect)
        np.testing.assert_array_equal(episode_confusion(torch.tensor(pred), torch.tensor(target)), expect)
    with pytest.raises(ValueError, match="binarise"):
        episode_confusion(np.array([[0, 1]]), np.array([[0, 3]]))
    with pytest.raises(ValueError, match="shape"):
        episode_confusion(np.zeros((2, 2)), np.zeros((2, 3)))


def test_miou_fbiou_per_class_against_hand_counts():
    meter = _filled()
    assert meter.per_class() == pytest.approx(CLASS_IOU)
    assert meter.miou() == pytest.approx((0.2 + 0.75) / 2)
    assert meter.fb_iou() == pytest.approx(FB_IOU)
    assert meter.missing_classes == [3] and meter.n_episodes == 4
    np.testing.assert_array_equal(meter.confusion.sum(0), [[13, 2], [3, 4]])
    s = meter.summary()
    assert s["per_class"] == pytest.approx({"1": 0.2, "2": 0.75}) and s["missing_classes"] == [3]
    with pytest.raises(ValueError, match="not one of"):
        meter.update(7, np.zeros((2, 2)), np.zeros((2, 2)))


def test_mean_of_episode_ious_is_not_the_protocol():
    # the per-class sum-then-divide differs from averaging per-episode IoUs (0.5 * (1/3 + 0))
    assert _filled(EPISODES[:2]).per_class()[1] == pytest.approx(0.2)


def test_empty_meter_and_zero_union_class():
    meter = FewShotMeter([4, 5])
    assert math.isnan(meter.miou()) and math.isnan(meter.fb_iou())
    meter.update(4, np.zeros((2, 2), int), np.zeros((2, 2), int))  # nothing to find, nothing predicted
    assert meter.per_class() == {4: 0.0}  # PFENet: I / (U + 1e-10)
    assert meter.fb_iou() == pytest.approx(0.5)  # background perfect, foreground 0


def test_merge_and_state_dict_roundtrip():
    a, b = _filled(EPISODES[:1]), _filled(EPISODES[1:])
    a.merge(b)
    full = _filled()
    np.testing.assert_array_equal(a.confusion, full.confusion)
    assert a.miou() == pytest.approx(full.miou())
    state = json.loads(json.dumps(full.state_dict()))
    again = FewShotMeter.from_state_dict(state)
    assert again.fb_iou() == pytest.approx(FB_IOU) and again.missing_classes == [3]
    with pytest.raises(ValueError):
        FewShotMeter([1, 2]).merge(full)


def test_summarise_seeds():
    out = summarise_seeds([0.5, 0.6, 0.7])
    assert out["mean"] == pytest.approx(0.6) and out["std"] == pytest.approx(0.1) and out["n"] == 3
    out = summarise_seeds([{"miou": 0.5, "fb_iou": 0.7, "per_class": {}}, {"miou": 0.7, "fb_iou": 0.7, "per_class": {}}])
    assert set(out) == {"miou", "fb_iou"}
    assert out["miou"]["mean"] == pytest.approx(0.6) and out["fb_iou"]["std"] == 0.0
    assert summarise_seeds([0.4])["std"] == 0.0


def test_upsample_logits_to_original_size():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])  # fg - bg: +1 top row, -2 bottom row
    # logits covering the whole frame: rows at 0, 0.5, 1 of the 2-row grid: +1, -0.5, -2
    pred = upsample_logits(logits, size=(3, 5), protocol="hsnet")
    assert pred.shape == (3, 5) and pred.dtype == torch.long
    assert pred[:, 0].tolist() == [1, 0, 0] and (pred == pred[:, :1]).all()
    # on a 4 x 4 test canvas a 3 x 5 image is the block test_size(3, 5, 4) = 2 x 4 (rows
    # +1, -2); the padding rows (+5) must not leak in. Block rows back to 3 rows with
    # half-pixel centres: sources -1/6 (clamped to 0), 0.5, 7/6 (clamped to 1): +1, -0.5, -2
    canvas = torch.zeros(1, 2, 4, 4)
    canvas[0, 1] = torch.tensor([1.0, -2.0, 5.0, 5.0])[:, None]
    pred = upsample_logits(canvas, size=(3, 5))
    assert pred.shape == (3, 5) and pred[:, 0].tolist() == [1, 0, 0] and (pred == pred[:, :1]).all()
    assert upsample_logits(logits.expand(2, -1, -1, -1), size=(3, 5)).shape == (2, 3, 5)
    # PFENet's scoring reads the same canvas resized to L x L = 5 x 5 (align_corners=True:
    # canvas row 3 i / 4) and cropped to 3 rows: rows 0, 0.75, 1.5 -> +1, -1.25, +1.5: its
    # stretched read reaches into the padding, which the exact inverse never does
    pred = upsample_logits(canvas, size=(3, 5), protocol="pfenet")
    assert pred[:, 0].tolist() == [1, 0, 1] and (pred == pred[:, :1]).all()
    with pytest.raises(ValueError, match="protocol must be one of"):
        upsample_logits(canvas, size=(3, 5), protocol="bam")
    with pytest.raises(ValueError, match="S x S output"):
        upsample_logits(logits, size=(3, 5), crop=4, protocol="pfenet")


def test_missing_classes_left_out_and_pfenet_average_reported():
    """mIoU averages the classes with episodes; PFENet's / HSNet's average over every class
    of the fold (a class without an episode counts 0) is reported beside it."""
    meter = _filled()  # classes 1, 2 with episodes, 3 without
    assert meter.miou() == pytest.approx((0.2 + 0.75) / 2)
    assert meter.miou_all_classes() == pytest.approx((0.2 + 0.75 + 0) / 3)
    s = meter.summary()
    assert s["missing_classes"] == [3] and s["miou_all_classes"] == pytest.approx(0.95 / 3)
    full = _filled(classes=(1, 2))
    assert full.miou_all_classes() == pytest.approx(full.miou())  # nothing missing: equal
    assert math.isnan(FewShotMeter([1]).miou_all_classes())


def test_episode_confusions_match_the_one_episode_path():
    """The batched, sync-free counts equal episode_confusion of upsample_logits, episode by
    episode, with labels padded to the batch's largest size as the collate pads them."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 16, 16, generator=gen)
    sizes = [(20, 30), (9, 7), (16, 16)]
    labels = torch.full((3, 20, 30), 255, dtype=torch.long)
    for j, (h, w) in enumerate(sizes):
        labels[j, :h, :w] = torch.randint(0, 2, (h, w), generator=gen)
        labels[j, 0, :3] = 255
    got = episode_confusions(logits, labels, torch.tensor(sizes)).numpy()
    for j, (h, w) in enumerate(sizes):
        want = episode_confusion(upsample_logits(logits[j:j + 1], (h, w)), labels[j, :h, :w])
        np.testing.assert_array_equal(got[j], want)
    inter, union = intersection_union(got)
    c = got[0]
    assert inter[0].tolist() == [c[0, 0], c[1, 1]]
    assert union[0].tolist() == [c[0, 0] + c[0, 1] + c[1, 0], c[1, 1] + c[0, 1] + c[1, 0]]
    # the meter fed at once equals the meter fed episode by episode
    a, b = FewShotMeter([1, 2]), FewShotMeter([1, 2])
    a.add([2, 1, 2], got)
    for cls, conf in zip([2, 1, 2], got, strict=True):
        b.confusion[b._row[cls]] += conf
        b.episodes[b._row[cls]] += 1
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.episodes.tolist() == [1, 2]
    with pytest.raises(ValueError, match="not among"):
        a.add([3], got[:1])


def test_several_protocols_in_one_pass_equal_each_alone():
    """episode_confusions(protocol=("pfenet", "exact")) gives, per episode, what each
    protocol gives on its own (and the two differ on random logits)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 17, 17, generator=gen)
    sizes = [(20, 30), (9, 7), (17, 17)]
    labels = torch.full((3, 20, 30), 255, dtype=torch.long)
    for j, (h, w) in enumerate(sizes):
        labels[j, :h, :w] = torch.randint(0, 2, (h, w), generator=gen)
    both = episode_confusions(logits, labels, sizes, protocol=("pfenet", "exact"))
    assert both.shape == (3, 2, 2, 2)
    for k, p in enumerate(("pfenet", "exact")):
        np.testing.assert_array_equal(both[:, k], episode_confusions(logits, labels, sizes, protocol=p))
    assert not torch.equal(both[:, 0], both[:, 1])
    with pytest.raises(ValueError, match="protocol must be one of"):
        episode_confusions(logits, labels, sizes, protocol=("pfenet", "bam"))


# ---------------------------------------------------------------------------------------
# Region-map recall (paper Table 7)
# ---------------------------------------------------------------------------------------
def test_region_recall_hand_map():
    m = torch.tensor([[[[0.0, 0.5], [0.8, 1.0]]]])
    assert region_recall(m, torch.tensor([[[1, 1], [0, 1]]]), thresholds=[0.4, 0.9]) == pytest.approx(
        {0.4: 2 / 3, 0.9: 1 / 3})
    # 255 is left out: foreground values are 0 and 1
    assert region_recall(m, torch.tensor([[[1, 255], [0, 1]]]), thresholds=[0.4]) == pytest.approx({0.4: 0.5})
    keys = list(region_recall(m, torch.tensor([[[1, 1], [0, 1]]])))
    assert keys == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_region_map_is_resized_to_the_label():
    m = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # -> columns 0, 0.5, 1 at 3 x 3 (align_corners)
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    target[0, :, 1] = 1  # the middle column
    assert region_recall(m, target, thresholds=[0.4, 0.6]) == pytest.approx({0.4: 1.0, 0.6: 0.0})


def test_region_meter_recall_precision_iou():
    meter = RegionMeter(thresholds=[0.4])
    meter.update(torch.tensor([[[[0.0, 0.5], [0.8, 1.0]]]]), torch.tensor([[1, 255], [0, 1]]))  # H x W
    # valid above 0.4: 0.8 (bg), 1.0 (fg) -> tp 1, pos 2; fg 2
    meter.update(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 0], [1, 0]]]))  # one more missed fg pixel
    assert meter.fg == 3 and meter.tp.tolist() == [1] and meter.pos.tolist() == [2]
    assert meter.recall() == pytest.approx({0.4: 1 / 3})
    assert meter.precision() == pytest.approx({0.4: 1 / 2})
    assert meter.iou() == pytest.approx({0.4: 1 / (3 + 2 - 1)})
    again = RegionMeter().load_state_dict(json.loads(json.dumps(meter.state_dict())))
    assert again.recall() == meter.recall() and again.summary()["episodes"] == 2
    c = region_counts(torch.ones(2, 1, 3, 3), torch.ones(2, 4, 4, dtype=torch.long), thresholds=[0.5])
    assert c["fg"] == 32 and c["tp"].tolist() == [32]
