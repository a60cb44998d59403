"""Tests for model/fss/qgnet.py: region maps and prototypes on hand-made features, K-shot
averaging, shapes and bins, frozen backbones, and a few training steps that must learn."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import Backbone, build_backbone
from model.fss.qgnet import (
    QGNet,
    cosine_max_map,
    guided_region_map,
    masked_average_pool,
    minmax_normalise,
    resolve_bins,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is 10x faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# A tiny stand-in backbone with the real interface (output stride 8, BN to check eval mode)
# ---------------------------------------------------------------------------------------
def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyBackbone(Backbone):
    """layer0..4: 3x3 convs with strides 2, 2, 2, 1, 1 -> ceil(H / 8) like the dilated nets."""

    def __init__(self, channels=(4, 8, 8, 16, 24), seed=0):
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        names = ("layer0", "layer1", "layer2", "layer3", "layer4")
        super().__init__(
            name="tiny",
            channels=dict(zip(names, channels, strict=True)),
            strides={"layer0": 2, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8},
            dilated=True,
        )
        cin = 3
        for name, c, s in zip(names, channels, (2, 2, 2, 1, 1), strict=True):
            setattr(self, name, _block(cin, c, s))
            cin = c
        for m in self.modules():  # variance-preserving init: informative features at random
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        torch.random.set_rng_state(gen_state)

    def _run_stage(self, name, x):
        return getattr(self, name)(x)


def _net(**kw):
    kw.setdefault("backbone", TinyBackbone(seed=0))
    kw.setdefault("prior_backbone", TinyBackbone(channels=(4, 8, 8, 16, 20), seed=1))
    kw.setdefault("reduce_dim", 16)
    torch.manual_seed(0)
    return QGNet(**kw)


def _episode(n=1, k=1, size=65, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 3, size, size, generator=g)
    s = torch.randn(n, k, 3, size, size, generator=g)
    m = torch.zeros(n, k, size, size)
    m[..., size // 4: size // 2 + 5, size // 3: size - 5] = 1
    m[..., :3, :] = 255  # ignore -> background
    return q, s, m


# ---------------------------------------------------------------------------------------
# Region maps and prototypes on hand-made features
# ---------------------------------------------------------------------------------------
def _feat(*vectors, h=1):
    """C x P vectors -> 1 x C x h x (P / h) feature map."""
    x = torch.tensor(vectors, dtype=torch.float32).T  # C x P
    return x.reshape(1, x.shape[0], h, -1)


E0, E1, E2 = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]


def test_cosine_max_map_known_answer():
    q = _feat([2.0, 0, 0], E1, [1.0, 1.0, 0])  # positions: scaled e0, e1, e0 + e1
    k = _feat(E0, E2)
    out = cosine_max_map(q, k)  # best cosines 1, 0, 1/sqrt(2) -> min-max
    assert out.shape == (1, 1, 1, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.0, 1 / math.sqrt(2)]), atol=1e-6, rtol=0)


def test_guided_map_ignores_masked_out_support_positions():
    support = _feat(E0, E1)  # position 0 foreground (e0), position 1 background (e1)
    query = _feat([0, 3.0, 0], [1.0, 0.5, 0], E2)  # perfect match of the background, partial fg match, none
    mask = torch.tensor([[[[1.0, 0.0]]]])
    out = guided_region_map(query, support, mask).flatten()
    # the background match scores 0 (zeroed support feature), the partial fg match becomes the max
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    unmasked = guided_region_map(query, support, torch.ones(1, 1, 1, 2)).flatten()
    assert unmasked[0] == pytest.approx(1.0, abs=1e-6)  # without the mask it would reach 1
    # a full-resolution mask is resized (bilinear, align_corners) to the support grid
    full = torch.zeros(1, 1, 4, 8)
    full[..., :4] = 1
    torch.testing.assert_close(guided_region_map(query, support, full).flatten(), out)


def test_minmax_of_constant_map_is_zero_not_nan():
    out = minmax_normalise(torch.full((2, 5), 0.3))
    assert torch.equal(out, torch.zeros(2, 5))
    zero_q = cosine_max_map(torch.zeros(1, 4, 3, 3), torch.rand(1, 4, 2, 2))
    assert torch.equal(zero_q, torch.zeros(1, 1, 3, 3))


def test_cosine_map_stays_float32_under_autocast():
    q, k = torch.rand(1, 8, 4, 4), torch.rand(1, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cosine_max_map(q.bfloat16(), k.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cosine_max_map(q.bfloat16().float(), k.bfloat16().float()))


def test_masked_average_pool_hand_example():
    feat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # 1 x 2 x 2 x 2
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    out = masked_average_pool(feat, mask)
    assert out.shape == (1, 2, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([4.0, 40.0]) / 2.0005)
    soft = torch.tensor([[[[0.5, 0.0], [0.0, 1.0]]]])
    torch.testing.assert_close(masked_average_pool(feat, soft).flatten(), torch.tensor([4.5, 45.0]) / 1.5005)


# ---------------------------------------------------------------------------------------
# Bins
# ---------------------------------------------------------------------------------------
def test_resolve_bins_pfenet_configs():
    assert resolve_bins((60, 30, 15, 8), (60, 60)) == [(60, 60), (30, 30), (15, 15), (8, 8)]
    assert resolve_bins((1.0, 0.5, 0.25, 0.125), (81, 81)) == [(81, 81), (40, 40), (20, 20), (10, 10)]  # COCO 641
    assert resolve_bins((1.0, 0.5, 0.25, 0.125), (13, 13)) == [(13, 13), (6, 6), (3, 3), (1, 1)]
    assert resolve_bins((1.0, 0.125), (5, 16)) == [(5, 16), (1, 2)]  # never below 1


def test_train_size_fixes_fractional_bins():
    net = _net(pyramid_bins=None, train_size=641)
    assert net.pyramid_bins == (81, 40, 20, 10)
    assert _net(pyramid_bins=None).pyramid_bins == (1.0, 0.5, 0.25, 0.125)


# ---------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------
def test_shapes_at_473_default_bins():
    net = _net(reduce_dim=8).eval()
    q, s, m = _episode(size=473)
    with torch.no_grad():
        out = net(q, s, m, return_maps=True)
    assert out["logits"].shape == (1, 2, 473, 473)
    assert [tuple(a.shape) for a in out["aux"]] == [(1, 2, b, b) for b in (60, 30, 15, 8)]
    assert out["guided_map"].shape == out["prior_map"].shape == (1, 1, 60, 60)
    assert out["prototype"].shape == (1, 8, 1, 1)


@pytest.mark.parametrize("size, feat", [(97, 13), (100, 13), (66, 9)])
def test_shapes_other_sizes_fractional_bins(size, feat):
    net = _net(pyramid_bins=None).eval()
    q, s, m = _episode(n=2, k=2, size=size)
    with torch.no_grad():
        out = net(q, s, m, return_maps=True)
        plain = net(q, s, m)
    assert out["logits"].shape == plain.shape == (2, 2, size, size)
    expect = [(max(1, int(feat * f)),) * 2 for f in (1.0, 0.5, 0.25, 0.125)]
    assert [tuple(a.shape[-2:]) for a in out["aux"]] == expect == net.bins_for((feat, feat))
    assert out["guided_map"].shape == out["prior_map"].shape == (2, 1, feat, feat)
    for key in ("guided_map", "prior_map"):
        assert 0 <= out[key].min() and out[key].max() <= 1
    assert torch.isfinite(out["logits"]).all()


def test_without_prior_map_is_pfenet_with_513_merge_channels():
    net = QGNet(backbone=TinyBackbone(), prior_backbone=None, use_prior_map=False)
    assert net.prior_backbone is None and not hasattr(net, "prior_proj")
    assert all(m[0].in_channels == 513 for m in net.init_merge)
    full = QGNet(backbone=TinyBackbone(), prior_backbone=TinyBackbone(seed=1))
    assert all(m[0].in_channels == 514 for m in full.init_merge)
    assert full.down_query[0].in_channels == 8 + 16  # mid stages concatenated
    with pytest.raises(ValueError, match="prior_backbone"):
        QGNet(backbone=TinyBackbone(), prior_backbone=None)
    small = _net(use_prior_map=False, prior_backbone=None).eval()
    out = small(*_episode(), return_maps=True)
    assert out["prior_map"] is None and out["logits"].shape == (1, 2, 65, 65)


def test_real_backbones_efficientnet_and_vgg():
    lite = build_backbone("efficientnet_lite0", weights="none")
    net = _net(backbone=lite, prior_backbone=TinyBackbone(seed=2), pyramid_bins=None).eval()
    assert net.down_query[0].in_channels == 40 + 112
    q, s, m = _episode(k=2)
    with torch.no_grad():
        out = net(q, s, m, return_maps=True)
    assert out["logits"].shape == (1, 2, 65, 65) and out["guided_map"].shape == (1, 1, 9, 9)
    # VGG (PFENet): layer2 (stride 8) resized to layer3 (stride 16); maps at the bridge size
    vgg = build_backbone("vgg16", weights="none")
    net = _net(backbone=vgg, prior_backbone=TinyBackbone(seed=2), pyramid_bins=None).eval()
    assert net.down_query[0].in_channels == 256 + 512
    with torch.no_grad():
        out = net(q, s, m, return_maps=True)
    assert out["logits"].shape == (1, 2, 65, 65)
    assert out["guided_map"].shape == out["prior_map"].shape == (1, 1, 5, 5)


# ---------------------------------------------------------------------------------------
# K-shot and the query-only prior
# ---------------------------------------------------------------------------------------
def test_identical_shots_equal_one_shot():
    net = _net().eval()
    q, s, m = _episode(size=65)
    with torch.no_grad():
        one = net(q, s, m)
        three = net(q, s.expand(-1, 3, -1, -1, -1), m.expand(-1, 3, -1, -1))
    torch.testing.assert_close(three, one, atol=1e-5, rtol=1e-5)


def test_k_shots_average_prototypes_and_guided_maps():
    net = _net().eval()
    q, s, m = _episode(k=2, seed=3)
    m[:, 1] = 0
    m[:, 1, 30:60, 5:30] = 1  # a different mask for the second shot
    with torch.no_grad():
        both = net(q, s, m, return_maps=True)
        a = net(q, s[:, :1], m[:, :1], return_maps=True)
        b = net(q, s[:, 1:], m[:, 1:], return_maps=True)
    assert both["prototypes"].shape == (1, 2, 16, 1, 1)
    torch.testing.assert_close(both["prototype"], (a["prototype"] + b["prototype"]) / 2)
    torch.testing.assert_close(both["guided_map"], (a["guided_map"] + b["guided_map"]) / 2)
    assert not torch.allclose(a["prototype"], b["prototype"])


def test_prior_map_depends_on_the_query_alone():
    net = _net().eval()
    q, s, m = _episode(seed=4)
    _, s2, _ = _episode(seed=5)
    m2 = torch.zeros_like(m)
    m2[..., 10:20, 10:20] = 1
    with torch.no_grad():
        a = net(q, s, m, return_maps=True)
        b = net(q, s2, m2, return_maps=True)
        c = net(q, torch.cat([s, s2], 1), torch.cat([m, m2], 1), return_maps=True)
        direct = net.prior_region_map(q)
    assert torch.equal(a["prior_map"], b["prior_map"]) and torch.equal(a["prior_map"], c["prior_map"])
    torch.testing.assert_close(direct, a["prior_map"])  # same grid here (9 x 9)
    assert not torch.allclose(a["guided_map"], b["guided_map"])


# ---------------------------------------------------------------------------------------
# Frozen backbones, loss, learning
# ---------------------------------------------------------------------------------------
def test_backbones_frozen_and_in_eval_after_train():
    net = _net()
    net.train()
    for bb in (net.backbone, net.prior_backbone):
        assert not bb.training and all(not m.training for m in bb.modules())
        assert all(not p.requires_grad for p in bb.parameters())
    assert net.down_query.training and net.cls.training
    frozen = {id(p) for p in net.backbone.parameters()} | {id(p) for p in net.prior_backbone.parameters()}
    trainable = net.trainable_parameters()
    assert not frozen & {id(p) for p in trainable}
    assert len(trainable) + len(frozen) == len(list(net.parameters()))
    assert {id(p) for p in net.prior_proj.parameters()} <= {id(p) for p in trainable}
    bn = net.backbone.layer2[1]
    before = bn.running_mean.clone()
    out = net(*_episode(n=2), return_maps=True)
    net.loss(out["logits"], out["aux"], torch.randint(0, 2, (2, 65, 65))).backward()
    assert torch.equal(bn.running_mean, before)  # BN statistics untouched
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.prior_proj[0].weight.grad is not None and net.down_supp[0].weight.grad is not None


def test_forward_and_backward_under_bf16_autocast():
    net = _net()
    q, s, m = _episode(n=2, k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(q, s, m, return_maps=True)
        loss = net.loss(out["logits"], out["aux"], torch.randint(0, 2, (2, 65, 65)))
    loss.backward()
    assert out["guided_map"].dtype == out["prior_map"].dtype == out["prototype"].dtype == torch.float32
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_loss_is_main_plus_mean_aux_with_ignore():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 9, 9)
    aux = [torch.randn(2, 2, 9, 9), torch.randn(2, 2, 3, 3)]
    target = torch.randint(0, 2, (2, 9, 9))
    target[:, 0] = 255
    total, main, aux_mean = QGNet.loss(logits, aux, target, return_parts=True)
    keep = target != 255
    manual_main = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    up = F.interpolate(aux[1], size=(9, 9), mode="bilinear", align_corners=True)
    manual_aux = (F.cross_entropy(aux[0], target, ignore_index=255) + F.cross_entropy(up, target, ignore_index=255)) / 2
    torch.testing.assert_close(main, manual_main)
    torch.testing.assert_close(aux_mean, manual_aux)
    torch.testing.assert_close(total, manual_main + manual_aux)


def _shape_task(size=65):
    """Two fixed episodes: bright rectangles / a bright disc on noise; the mask is the shape."""
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    shapes = [((yy - 30) ** 2 + (xx - 36) ** 2 < 15**2), (yy > 10) & (yy < 40) & (xx > 20) & (xx < 60),
              ((yy - 40) ** 2 + (xx - 22) ** 2 < 12**2), (yy > 30) & (yy < 60) & (xx > 5) & (xx < 35)]
    imgs = []
    for sh in shapes:
        img = 0.5 * torch.randn(3, size, size, generator=g)
        img[:, sh] += torch.tensor([2.0, -1.0, 1.5]).view(3, 1)
        imgs.append(img)
    masks = torch.stack([sh.long() for sh in shapes])
    q = torch.stack([imgs[0], imgs[2]])
    s = torch.stack([imgs[1], imgs[3]]).unsqueeze(1)
    return q, s, masks[[1, 3]].unsqueeze(1), masks[[0, 2]]


def test_a_few_training_steps_learn_the_task():
    """90 Adam steps on two fixed episodes: the loss falls below what the class prior
    alone reaches (2 x binary entropy of the foreground fraction, main + aux) and the
    foreground is found. (SGD as in PFENet only learns the class prior in this many steps:
    the stack has no BatchNorm and starts with small activations.)"""
    net = _net(reduce_dim=16, pyramid_bins=None, dropout=0.0)
    net.train()
    q, s, sm, target = _shape_task()
    opt = torch.optim.Adam(net.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(90):
        out = net(q, s, sm, return_maps=True)
        loss = net.loss(out["logits"], out["aux"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    f = target.float().mean().item()
    prior_only = -2 * (f * math.log(f) + (1 - f) * math.log(1 - f))  # about 0.79
    assert sum(losses[-3:]) / 3 < 0.7 * prior_only < losses[0], losses
    net.eval()
    with torch.no_grad():
        pred = net(q, s, sm).argmax(1)
    iou = ((pred == 1) & (target == 1)).sum() / ((pred == 1) | (target == 1)).sum()
    assert iou > 0.4, float(iou)  # 0.6-0.9 over backbone seeds


def _cosine_max_map_quotient(query, keys, eps=1e-7):
    """The formula before the memory fix: bmm(k, q) / (bmm(|k|, |q|) + eps) (PFENet's)."""
    n, c, h, w = query.shape
    q = query.float().reshape(n, c, h * w)
    k = keys.float().reshape(n, c, -1).transpose(1, 2)
    sim = torch.bmm(k, q) / (torch.bmm(k.norm(dim=2, keepdim=True), q.norm(dim=1, keepdim=True)) + eps)
    return minmax_normalise(sim.max(dim=1).values, eps=eps).reshape(n, 1, h, w)


def test_cosine_max_map_equals_the_quotient_formula_and_its_gradient():
    torch.manual_seed(0)
    q = torch.relu(torch.randn(2, 16, 6, 5)).requires_grad_(True)  # ReLU: some zero vectors
    k = torch.relu(torch.randn(2, 16, 4, 4) - 0.5)
    k[0, :, 0, 0] = 0  # a masked-out support position
    k.requires_grad_(True)
    w = torch.rand(2, 1, 6, 5)
    new, old = cosine_max_map(q, k), _cosine_max_map_quotient(q, k)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    gq_new, gk_new = torch.autograd.grad((new * w).sum(), (q, k))
    gq_old, gk_old = torch.autograd.grad((old * w).sum(), (q, k))
    torch.testing.assert_close(gq_new, gq_old, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gk_new, gk_old, rtol=1e-4, atol=1e-5)


def test_cosine_max_map_keeps_no_positions_squared_tensor_for_backward():
    # The memory fix: nothing of size N x Pk x P is saved for backward (the quotient kept two).
    q = torch.randn(2, 8, 12, 12, requires_grad=True)  # P = 144
    k = torch.randn(2, 8, 12, 12, requires_grad=True)  # Pk = 144
    big = 2 * 144 * 144
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cosine_max_map(q, k)
    assert sizes and max(sizes) < big, sizes
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _cosine_max_map_quotient(q, k)
    assert sum(s >= big for s in sizes) >= 2  # the old formula: numerator and denominator


def test_channels_last_network_gives_the_same_outputs_and_gradients():
    # What the FSS trainer does on CUDA (model.speed.channels_last_on_cuda); checked on CPU.
    ref, cl = _net(), _net()
    cl.to(memory_format=torch.channels_last)
    q, s, m = _episode(n=2, k=2)
    target = torch.randint(0, 2, (2, 65, 65), generator=torch.Generator().manual_seed(1))
    outs = []
    for net in (ref, cl):
        net.eval()  # no dropout: compare the same function
        out = net(q, s, m, return_maps=True)
        loss = net.loss(out["logits"], out["aux"], target)
        loss.backward()
        outs.append((out, loss))
    (o1, l1), (o2, l2) = outs
    assert o2["prior_map"] is not None
    torch.testing.assert_close(o2["logits"], o1["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o2["guided_map"], o1["guided_map"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(o2["prior_map"], o1["prior_map"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    for (name, p1), p2 in zip(ref.named_parameters(), cl.parameters(), strict=True):
        if p1.grad is not None:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_speed_switches_are_cuda_only():
    from model.speed import channels_last_on_cuda, configure_cuda

    bench = torch.backends.cudnn.benchmark
    assert configure_cuda("cpu") is False and torch.backends.cudnn.benchmark == bench
    net = _net()
    channels_last_on_cuda(net, torch.device("cpu"))
    w = net.beta_conv[0][0].weight  # 3 x 3: the two layouts differ
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------
# --frozen-bn reference: BatchNorm of the frozen backbones as PFENet's train.py leaves it
# ---------------------------------------------------------------------------------------
def _bn_stat_keys(net):
    from model.fss.build import BN_STATS

    return {k for k in net.state_dict()
            if k.startswith(("backbone.", "prior_backbone.")) and k.rsplit(".", 1)[-1] in BN_STATS}


@pytest.mark.parametrize("mode", ["eval", "reference"])
def test_frozen_bn_changes_exactly_the_running_statistics_or_nothing(mode):
    """One training forward/backward (no optimiser step): ``reference`` changes exactly the
    BatchNorm running statistics of both frozen backbones, ``eval`` changes nothing; no
    tensor with requires_grad changes and no frozen parameter gets a gradient."""
    net = _net(frozen_bn=mode).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainable = {k for k, p in net.named_parameters() if p.requires_grad}
    q, s, m = _episode(n=2, k=2)
    out = net(q, s, m, return_maps=True)
    net.loss(out["logits"], out["aux"], torch.randint(0, 2, (2, 65, 65))).backward()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    stats = _bn_stat_keys(net)
    assert len(stats) == 3 * 10  # 5 BN layers in each of the two backbones
    assert changed == (stats if mode == "reference" else set())
    assert not changed & trainable
    assert all(p.grad is None for bb in (net.backbone, net.prior_backbone) for p in bb.parameters())
    bns = [mod for bb in (net.backbone, net.prior_backbone) for mod in bb.modules()
           if isinstance(mod, nn.BatchNorm2d)]
    assert all(b.training == (mode == "reference") for b in bns)
    # the reference's calls: F sees the query once and each of the K = 2 shots once (its
    # layer4 the masked layer-3 features of each shot); Fp sees the query once
    if mode == "reference":
        assert all(int(b.num_batches_tracked) == 3 for b in net.backbone.modules()
                   if isinstance(b, nn.BatchNorm2d))
        assert all(int(b.num_batches_tracked) == 1 for b in net.prior_backbone.modules()
                   if isinstance(b, nn.BatchNorm2d))


@pytest.mark.parametrize("mode", ["eval", "reference"])
def test_evaluation_is_in_eval_mode_either_way(mode):
    net = _net(frozen_bn=mode)
    net.train()
    net(*_episode(n=2))  # reference: the statistics drift here
    net.eval()
    assert not any(mod.training for mod in net.modules())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ep = _episode(n=2, seed=1)
    with torch.no_grad():
        a = net(*ep)
        b = net(*(t[:1] for t in ep))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing moves
    torch.testing.assert_close(a[:1], b)  # per-sample: no batch statistics at evaluation
    net.train()  # and back: only the backbones' BN layers follow (reference), nothing else
    for bb in (net.backbone, net.prior_backbone):
        assert all(mod.training == (mode == "reference" and isinstance(mod, nn.BatchNorm2d))
                   for mod in bb.modules())


def test_reference_bn_runs_the_shots_one_at_a_time():
    """With batch statistics the K shots pass the backbone as K batches of N (the reference's
    per-shot loop): shot i's features equal those of a 1-shot pass of shot i alone, and
    differ from one N*K batch."""
    net = _net(frozen_bn="reference").train()
    _, s, m = _episode(n=2, k=2)
    sx = s.flatten(0, 1)
    sm = (m.flatten(0, 1) == 1).float().unsqueeze(1)
    with torch.no_grad():
        feats, high = net._support_features(sx, sm, 2)
        for i in range(2):
            f_i, h_i = net._support_features(s[:, i], (m[:, i] == 1).float().unsqueeze(1), 1)
            torch.testing.assert_close(high.view(2, 2, *high.shape[1:])[:, i], h_i)
            torch.testing.assert_close(feats["layer2"].view(2, 2, *feats["layer2"].shape[1:])[:, i],
                                       f_i["layer2"])
        net.frozen_bn = "eval"  # the joint pass, still with batch statistics
        _, joint = net._support_features(sx, sm, 2)
    assert not torch.allclose(joint, high)


def test_frozen_bn_reference_checkpoint_state_holds_the_statistics():
    from model.fss.build import trainable_state

    ref, ev = _net(frozen_bn="reference"), _net()
    frozen = ("backbone.", "prior_backbone.")
    assert {k for k in trainable_state(ref) if k.startswith(frozen)} == _bn_stat_keys(ref)
    assert not any(k.startswith(frozen) for k in trainable_state(ev))
    assert set(trainable_state(ref)) - _bn_stat_keys(ref) == set(trainable_state(ev))
    with pytest.raises(ValueError, match="frozen_bn must be one of"):
        _net(frozen_bn="train")
