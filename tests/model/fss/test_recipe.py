"""COCO defaults (issue 10 §3): the QGNet paper's setting by default, PFENet's one flag away."""
import pytest

from model.fss.config import FssConfig, finalize_config


def _cfg(**kw):
    return finalize_config(FssConfig(weights="none", use_prior_map=False, **kw))


def test_coco_defaults_are_the_papers_and_pfenet_is_one_flag_away():
    paper = _cfg(dataset="coco")
    assert (paper.backbone, paper.crop, paper.scale_min, paper.scale_max) == ("resnet50", 473, 0.8, 1.25)
    assert (paper.batch_size, paper.lr, paper.epochs) == (8, 0.005, 50)
    pfenet = _cfg(dataset="coco", recipe="pfenet")
    assert (pfenet.backbone, pfenet.crop) == ("resnet101", 641)
    assert (pfenet.batch_size, pfenet.lr, pfenet.epochs) == (8, 0.005, 50)
    # explicit options still win over either recipe
    assert _cfg(dataset="coco", recipe="pfenet", crop=321).crop == 321
    assert _cfg(dataset="coco", backbone="resnet101").backbone == "resnet101"


def test_pascal_and_demo_do_not_depend_on_the_recipe():
    for ds in ("pascal", "demo"):
        a, b = _cfg(dataset=ds), _cfg(dataset=ds, recipe="pfenet")
        assert (a.backbone, a.crop, a.epochs) == (b.backbone, b.crop, b.epochs)
    assert _cfg(dataset="pascal").crop == 473


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ValueError, match="--recipe must be one of paper, pfenet"):
        _cfg(dataset="coco", recipe="hsnet")
