"""model.fss.compare: per-episode mIoU / FB-IoU and the paired bootstrap of B - A."""
import numpy as np
import pytest

from model.fss.compare import bootstrap_difference, compare_results, episode_metrics
from model.fss.metrics import FewShotMeter


def _confusion(inter, union, bg=2000):
    """E x 2 x 2 counts with foreground intersection ``inter`` and union ``union`` (misses only)."""
    inter, union = np.asarray(inter), np.asarray(union)
    c = np.zeros((inter.size, 2, 2), np.int64)
    c[:, 1, 1] = inter
    c[:, 1, 0] = union - inter
    c[:, 0, 0] = bg
    return c


def _population(rng, n, delta, *, classes=(1, 2, 3, 4, 5), union=1000):
    """Episodes whose population class IoU is p_c for A and p_c + delta for B.

    Each episode has its own difficulty (shared by A and B: the pairing), so per-episode
    scores vary far more than the difference does.
    """
    cls = rng.choice(np.asarray(classes), size=n)
    p_c = {c: 0.3 + 0.08 * i for i, c in enumerate(classes)}
    p = np.array([p_c[c] for c in cls]) + rng.uniform(-0.2, 0.2, n)
    ia = rng.binomial(union, p)
    ib = rng.binomial(union, np.clip(p + delta, 0, 1))
    return cls, _confusion(ia, np.full(n, union)), _confusion(ib, np.full(n, union))


def test_episode_metrics_equal_the_meter():
    rng = np.random.default_rng(0)
    meter = FewShotMeter([1, 2, 3, 4])
    cls, confs = [], []
    for _ in range(60):
        c = int(rng.integers(1, 4))  # class 4 never appears: left out of the mean by both
        target = rng.integers(0, 2, (17, 23))
        target[rng.random(target.shape) < 0.1] = 255
        pred = np.where(rng.random(target.shape) < 0.7, target % 255, 1 - target % 255)
        confs.append(meter.update(c, pred, target))
        cls.append(c)
    got = episode_metrics(cls, np.stack(confs), class_ids=[1, 2, 3, 4])
    assert got["miou"] == pytest.approx(meter.miou(), abs=1e-12)
    assert got["fb_iou"] == pytest.approx(meter.fb_iou(), abs=1e-12)


def test_identical_models_differ_by_exactly_zero():
    rng = np.random.default_rng(1)
    cls, a, _ = _population(rng, 300, 0.0)
    r = bootstrap_difference(cls, a, a.copy(), resamples=1000, seed=3)
    for k in ("miou", "fb_iou"):
        assert r[k]["estimate"] == 0.0
        assert r[k]["ci95"] == [0.0, 0.0] and r[k]["se"] == 0.0
    assert r["resamples"] == 1000 and r["episodes"] == 300


def test_large_known_difference_is_covered_and_excludes_zero():
    rng = np.random.default_rng(2)
    cls, a, b = _population(rng, 400, 0.05)
    r = bootstrap_difference(cls, a, b, resamples=2000, seed=0)
    lo, hi = r["miou"]["ci95"]
    assert lo < 0.05 < hi and lo > 0  # covers the true +5 points and not 0
    assert r["miou"]["estimate"] == pytest.approx(0.05, abs=0.01)
    assert r["miou"]["p_le_0"] == 0.0
    # the reverse comparison is the mirror image
    rev = bootstrap_difference(cls, b, a, resamples=2000, seed=0)
    assert rev["miou"]["estimate"] == pytest.approx(-r["miou"]["estimate"])
    assert rev["miou"]["ci95"] == pytest.approx([-hi, -lo])


def test_interval_coverage_is_near_nominal():
    """Over 80 synthetic test sets with a true difference of +0.5 points, the 95 % interval
    covers it in roughly 95 % of them (binomial: >= 85 % with overwhelming probability)."""
    rng = np.random.default_rng(4)
    covered = 0
    for i in range(80):
        cls, a, b = _population(rng, 200, 0.005)
        lo, hi = bootstrap_difference(cls, a, b, resamples=1000, seed=i)["miou"]["ci95"]
        covered += lo <= 0.005 <= hi
    assert covered >= 68, covered


def test_small_difference_interval_contains_zero():
    rng = np.random.default_rng(5)
    cls, a, b = _population(rng, 100, 0.0)
    lo, hi = bootstrap_difference(cls, a, b, resamples=1000, seed=0)["miou"]["ci95"]
    assert lo < 0 < hi


def test_groups_are_scored_per_file_and_averaged():
    rng = np.random.default_rng(6)
    c1, a1, b1 = _population(rng, 150, 0.02)
    c2, a2, b2 = _population(rng, 150, 0.06)
    cls, a, b = np.concatenate([c1, c2]), np.concatenate([a1, a2]), np.concatenate([b1, b2])
    group = np.repeat([321, 123], 150)
    r = bootstrap_difference(cls, a, b, group=group, resamples=1000, seed=0)
    per = [episode_metrics(c, y)["miou"] - episode_metrics(c, x)["miou"]
           for c, x, y in ((c1, a1, b1), (c2, a2, b2))]
    assert r["miou"]["estimate"] == pytest.approx(np.mean(per))
    assert r["groups"] == [123, 321]
    # same seed, same interval; another seed, another draw
    again = bootstrap_difference(cls, a, b, group=group, resamples=1000, seed=0)
    assert again["miou"]["ci95"] == r["miou"]["ci95"]
    assert bootstrap_difference(cls, a, b, group=group, resamples=1000, seed=1)["miou"]["ci95"] != r["miou"]["ci95"]


def test_bad_inputs_are_rejected():
    cls = np.array([1, 2])
    ok = _confusion([1, 1], [2, 2])
    with pytest.raises(ValueError, match="E x 2 x 2"):
        bootstrap_difference(cls, ok, ok[:1])
    with pytest.raises(ValueError, match="group"):
        bootstrap_difference(cls, ok, ok, group=[0])
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_difference(cls, ok, ok, resamples=0)


def _result(cls, conf, *, seed=321, **kw):
    m = episode_metrics(cls, conf)
    one = {"mean": m["miou"], "std": 0.0, "n": 1, "values": [m["miou"]]}
    fb = {"mean": m["fb_iou"], "std": 0.0, "n": 1, "values": [m["fb_iou"]]}
    r = {"dataset": "demo", "fold": 0, "shot": 1, "protocol": "pfenet", "seeds": [seed],
         "episodes": [len(cls)], "miou": one, "fb_iou": fb, "per_class": {}, "checkpoint": "x",
         "runs": [{"seed": seed, "per_episode": {"cls": list(map(int, cls)), "confusion": conf.tolist()}}]}
    r.update(kw)
    return r


def test_compare_results_of_the_evaluator():
    rng = np.random.default_rng(7)
    cls, a, b = _population(rng, 120, 0.03)
    r = compare_results(_result(cls, a), _result(cls, b), resamples=1000)
    assert r["diff"]["miou"]["estimate"] == pytest.approx(r["b"]["miou"]["mean"] - r["a"]["miou"]["mean"])
    assert r["episodes"] == 120 and r["seeds"] == [321]
    with pytest.raises(ValueError, match="fold"):
        compare_results(_result(cls, a), _result(cls, b, fold=1))
    with pytest.raises(ValueError, match="not the same episodes"):
        compare_results(_result(cls, a), _result(np.roll(cls, 1), b))
    old = _result(cls, b)
    del old["runs"][0]["per_episode"]
    with pytest.raises(ValueError, match="score the checkpoint again"):
        compare_results(_result(cls, a), old)
