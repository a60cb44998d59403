"""Model core of the prior pretraining: RingQueue, patch sampling and pooling, paired
augmentation, SplitBatchNorm and PriorMoCo (on a tiny stand-in backbone); the local patches'
crop reading and patch rule (issue 18 §3, §4)."""

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.prior.augment import MOCO_V2_AUGMENT, PairedAugment, crop_params
from model.prior.moco import PriorMoCo, SplitBatchNorm, convert_split_bn
from model.prior.patch_crops import crop_patches, patch_boxes
from model.prior.patch_rule import default_window, fill_slots
from model.prior.patches import patch_masks, pool_patches, sample_patch_ids
from model.prior.queue import RingQueue

MEAN = torch.tensor(MOCO_V2_AUGMENT["mean"]).view(3, 1, 1)
STD = torch.tensor(MOCO_V2_AUGMENT["std"]).view(3, 1, 1)


# ------------------------------------------------------------------------------ stand-in backbone
class TinyBackbone(nn.Module):
    """Two conv-BN-ReLU stages at stride 2 and 4, exposing the Backbone attributes."""

    stage_names = ("layer0", "layer1")
    high_stage = "layer1"

    def __init__(self, width: int = 8):
        super().__init__()
        self.channels = {"layer0": width, "layer1": 2 * width}
        self.strides = {"layer0": 2, "layer1": 4}
        self.layer0 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())

    def forward(self, x):
        f0 = self.layer0(x)
        return {"layer0": f0, "layer1": self.layer1(f0)}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core machine: intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grid_maps(n, size, cells):
    """N x size x size maps of cells x cells square superpixels, ids 1..cells**2."""
    r = torch.arange(size) * cells // size
    m = (r.view(-1, 1) * cells + r.view(1, -1) + 1).long()
    return m.expand(n, size, size).clone()


# ------------------------------------------------------------------------------ RingQueue
def test_ring_queue_wraps_with_variable_inserts():
    q = RingQueue(2, 10)
    assert q.keys.shape == (10, 2) and int(q.ptr) == 0
    torch.testing.assert_close(q.keys.norm(dim=1), torch.ones(10))  # random unit init
    ref = [None] * 10  # slot -> row value written there, inserting rows one at a time
    ptr, counter = 0, 0
    for n in (3, 4, 5, 12):
        rows = torch.arange(counter, counter + n, dtype=torch.float32)
        q.enqueue(torch.stack([rows, -rows], dim=1))
        for v in rows.tolist():
            ref[ptr] = v
            ptr = (ptr + 1) % 10
        counter += n
        assert int(q.ptr) == ptr
        for slot, v in enumerate(ref):
            if v is not None:
                assert q.keys[slot].tolist() == [v, -v]
    # explicit answers: after 3, 4, 5 rows (12 written) ptr 2; 12 more keep rows 14..23
    assert int(q.ptr) == 4
    assert q.keys[:, 0].tolist() == [20, 21, 22, 23, 14, 15, 16, 17, 18, 19]


def test_ring_queue_state_dict_round_trip_and_empty_insert():
    q = RingQueue(3, 7)
    q.enqueue(torch.randn(5, 3))
    q.enqueue(torch.zeros(0, 3))
    assert int(q.ptr) == 5
    r = RingQueue(3, 7)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == 5
    x = torch.randn(4, 3)
    q.enqueue(x)
    r.enqueue(x)
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == int(q.ptr) == 2
    assert {"keys", "ptr"} == set(q.state_dict())
    with pytest.raises(ValueError, match="n x 3"):
        q.enqueue(torch.zeros(2, 4))


# ------------------------------------------------------------------------------ augmentation
def _red_blue(h=40, w=60):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 255  # left red
    img[:, w // 2:, 2] = 255  # right blue
    pm = np.ones((h, w), np.uint16)
    pm[:, w // 2:] = 2
    return img, pm


def _unnormalise(x):
    return x * STD + MEAN


def test_paired_augment_map_follows_image_through_crop_and_flip():
    img, pm = _red_blue()
    aug = PairedAugment(size=32, photometric=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        x, m = aug(img, pm, generator=g)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert m.shape == (32, 32) and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= {1, 2}
        rgb = _unnormalise(x)
        red, blue = rgb[0], rgb[2]
        # nearest label vs bilinear colour: the pixel the label comes from has weight >= 1/2
        assert (red[m == 1] >= blue[m == 1] - 1e-4).all()
        assert (blue[m == 2] >= red[m == 2] - 1e-4).all()
        assert (red[m == 1] > blue[m == 1]).float().mean() > 0.9 if (m == 1).any() else True
        # the two sides stay on one side each: a column holds one label
        sides = [set(m[:, c].tolist()) for c in range(32)]
        assert all(len(s) == 1 for s in sides)


@pytest.mark.parametrize("p_flip", [0.0, 1.0])
def test_paired_augment_flip_swaps_sides_consistently(p_flip):
    img, pm = _red_blue(40, 60)
    # full-image crop (scale 1, aspect of the image) so only the flip acts
    aug = PairedAugment(size=30, scale=(1.0, 1.0), ratio=(1.5, 1.5), p_flip=p_flip, photometric=False)
    x, m = aug(img, pm, generator=torch.Generator().manual_seed(1))
    rgb = _unnormalise(x)
    left, right = (2, 1) if p_flip else (1, 2)
    assert (m[:, :15] == left).all() and (m[:, 15:] == right).all()
    left_red = rgb[0, :, :14].mean() > rgb[2, :, :14].mean()
    assert left_red == (left == 1)


def test_crop_params_full_and_fallback():
    assert crop_params(40, 60, (1.0, 1.0), (1.5, 1.5)) == (0, 0, 40, 60)
    # impossible aspect ratio: centred fallback crop within the ratio range
    top, left, h, w = crop_params(10, 100, (1.0, 1.0), (0.5, 2.0))
    assert (h, w) == (10, 20) and (top, left) == (0, 40)


def test_paired_augment_photometric_is_deterministic_and_keeps_ids():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pm = rng.integers(1, 40, (48, 64)).astype(np.uint16)
    aug = PairedAugment(size=24)
    a = aug(img, pm, generator=torch.Generator().manual_seed(5))
    b = aug(img, pm, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= set(np.unique(pm).tolist())
    assert torch.isfinite(a[0]).all()
    with pytest.raises(ValueError, match="same H x W"):
        aug(img, pm[:10])


# ------------------------------------------------------------------------------ patches
def test_sample_patch_ids_only_ids_in_both_views():
    map_q = torch.zeros(2, 8, 8, dtype=torch.long)
    map_q[0, :4, :4], map_q[0, :4, 4:], map_q[0, 4:, :4], map_q[0, 4:, 4:] = 1, 2, 3, 4
    map_k = torch.zeros(2, 8, 8, dtype=torch.long)
    map_k[0, :4], map_k[0, 4:, :4], map_k[0, 4:, 4:] = 2, 3, 5  # 1 and 4 hidden, 5 new
    map_q[1, :, :] = 7  # image 1: one patch 7 in q, none shared
    map_k[1, :, :] = 8
    ids, valid = sample_patch_ids(map_q, map_k, 4, min_pixels=1, generator=torch.Generator().manual_seed(0))
    assert ids.shape == valid.shape == (2, 4) and ids.dtype == torch.long and valid.dtype == torch.bool
    assert sorted(ids[0][valid[0]].tolist()) == [2, 3]
    assert valid[0].sum() == 2 and not valid[1].any()
    assert (ids[~valid] == 0).all()

    one, v1 = sample_patch_ids(map_q, map_k, 1, min_pixels=1)
    assert v1[0].all() and one[0, 0].item() in (2, 3)


def test_sample_patch_ids_respects_num_threshold_and_generator():
    maps = _grid_maps(3, 16, 4)  # 16 patches of 16 pixels
    maps[:, 0, 0] = 99  # a 1-pixel id: below min_pixels
    a, va = sample_patch_ids(maps, maps, 5, min_pixels=10, generator=torch.Generator().manual_seed(3))
    b, vb = sample_patch_ids(maps, maps, 5, min_pixels=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(va, vb) and va.all()
    assert ((a >= 1) & (a <= 16)).all()
    assert all(len(set(row.tolist())) == 5 for row in a)  # without replacement
    orders = {tuple(sample_patch_ids(maps, maps, 5, min_pixels=10,
                                     generator=torch.Generator().manual_seed(s))[0][0].tolist())
              for s in range(6)}
    assert len(orders) > 1  # random
    many, vm = sample_patch_ids(maps, maps, 20, min_pixels=10)
    assert vm.sum(1).tolist() == [16, 16, 16] and 99 not in many.tolist()
    pix1, _ = sample_patch_ids(maps, maps, 20, min_pixels=1)
    assert 99 in pix1[0].tolist()


def test_pool_patches_recovers_identity_from_one_hot_features():
    n, cells = 2, 4
    maps = _grid_maps(n, 32, cells)  # 16 regions of 8 x 8 pixels = one feature cell each
    region = _grid_maps(1, cells, cells)[0]  # region id of each 4 x 4 feature cell
    fmap = F.one_hot(region, cells * cells + 1).permute(2, 0, 1).float()  # 17 x 4 x 4
    fmap = fmap.expand(n, -1, -1, -1)
    ids = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) + 1 for i in range(n)])
    valid = torch.ones(n, 16, dtype=torch.bool)
    valid[1, -3:] = False
    pooled = pool_patches(fmap, maps, ids, valid)  # N x 16 x 17
    expected = F.one_hot(ids, cells * cells + 1).float() * valid[..., None]
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("size", [(4, 4), (3, 5)])
def test_patch_masks_are_area_fractions(size):
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(1, 6, (2, 12, 20), generator=g)
    ids = torch.tensor([[1, 2, 3, 0], [5, 4, 0, 0]])
    valid = ids > 0
    masks = patch_masks(maps, ids, valid, size)
    onehot = (maps[:, None] == ids[:, :, None, None]) & valid[:, :, None, None]
    torch.testing.assert_close(masks, F.adaptive_avg_pool2d(onehot.float(), size))
    # soft pooling = weighted mean of cells, weights the fractions
    fmap = torch.randn(2, 3, *size, generator=g)
    pooled = pool_patches(fmap, maps, ids, valid)
    for i in range(2):
        for p in range(4):
            m = masks[i, p]
            exp = (fmap[i] * m).sum((1, 2)) / m.sum() if valid[i, p] else torch.zeros(3)
            torch.testing.assert_close(pooled[i, p], exp)


# ------------------------------------------------------------------------------ SplitBatchNorm
def test_split_batchnorm_matches_per_group_bn():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    split = convert_split_bn(nn.Sequential(bn), 4)[0]
    assert isinstance(split, SplitBatchNorm) and set(split.state_dict()) == set(bn.state_dict())
    x = torch.randn(8, 3, 5, 5)
    y = split(x)
    rm, rv = torch.zeros(3), torch.zeros(3)
    for b in range(4):  # group b = samples b, b + 4
        idx = torch.tensor([b, b + 4])
        ref_bn = nn.BatchNorm2d(3)
        ref_bn.load_state_dict(bn.state_dict())
        torch.testing.assert_close(y[idx], ref_bn(x[idx]))
        rm += ref_bn.running_mean / 4
        rv += ref_bn.running_var / 4
    torch.testing.assert_close(split.running_mean, rm)
    torch.testing.assert_close(split.running_var, rv)
    split.eval()
    torch.testing.assert_close(split(x), F.batch_norm(x, rm, rv, bn.weight, bn.bias, False, 0.0, bn.eps))


def test_split_batchnorm_indivisible_batch_uses_largest_divisor():
    split = SplitBatchNorm(2, 4)
    x = torch.randn(6, 2, 3, 3)
    with pytest.warns(UserWarning, match="using 3 groups"):
        y = split(x)
    ref = nn.BatchNorm2d(2)
    torch.testing.assert_close(y[torch.tensor([0, 3])], ref(x[torch.tensor([0, 3])]))


# ------------------------------------------------------------------------------ PriorMoCo
def _batch(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    im_q, im_k = torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)
    maps = _grid_maps(n, size, 4)  # 16 patches of one feature cell (8 x 8 at stride 4 -> 2 x 2)
    map_k = maps.clone()
    map_k[:, :, : size // 4] = 0  # key view misses the first column of patches
    return im_q, im_k, maps, map_k


@pytest.mark.parametrize("loss", ["both", "global", "local"])
def test_prior_moco_forward_each_loss_mode(loss):
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, loss=loss,
                      patches_per_image=16, split_bn_groups=4)
    assert (model.encoder_q.head_global is None) == (loss == "local")
    assert (model.encoder_q.head_local is None) == (loss == "global")
    im_q, im_k, map_q, map_k = _batch()
    out = model(im_q, im_k, map_q, map_k)
    assert set(out) == {"loss", "loss_global", "loss_local", "acc_global", "acc_local", "n_patches",
                        "cos_global", "cos_local"}
    for part in ("global", "local"):  # the collapse monitor is 0 exactly for a branch that is off
        assert (float(out[f"cos_{part}"]) == 0.0) == (loss not in (part, "both"))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    expected = {"both": out["loss_global"] + out["loss_local"], "global": out["loss_global"],
                "local": out["loss_local"]}[loss]
    torch.testing.assert_close(out["loss"].detach(), expected)
    if loss != "global":  # 4 of 16 patches hidden in the key view: 12 usable per image,
        assert out["n_patches"].item() == 8 * 16  # the 4 empty slots filled with copies
        assert out["loss_local"] > 0
        torch.manual_seed(0)
        unfilled = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64,
                             loss=loss, patches_per_image=16, split_bn_groups=4, patch_fill="none")
        assert unfilled(im_q, im_k, map_q, map_k)["n_patches"].item() == 8 * 12
    if loss != "local":
        assert out["loss_global"] > 0 and 0 <= out["acc_global"] <= 1
    out["loss"].backward()


def test_prior_moco_momentum_update_and_no_key_gradients():
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, momentum=0.9,
                      split_bn_groups=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    im_q, im_k, map_q, map_k = _batch()
    model(im_q, im_k, map_q, map_k)["loss"].backward()
    opt.step()  # query encoder now differs from the key encoder
    q0 = [p.detach().clone() for p in model.encoder_q.parameters()]
    k0 = [p.detach().clone() for p in model.encoder_k.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(q0, k0, strict=True))
    opt.zero_grad()
    out = model(im_q, im_k, map_q, map_k)
    for pk, a, b in zip(model.encoder_k.parameters(), k0, q0, strict=True):
        torch.testing.assert_close(pk, 0.9 * a + 0.1 * b, rtol=1e-6, atol=1e-7)
    out["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    # the exported prior is the key encoder's backbone, with the plain backbone's keys
    sd = model.backbone_state_dict()
    assert set(sd) == set(TinyBackbone().state_dict())
    assert torch.equal(sd["layer0.0.weight"], model.encoder_k.backbone.layer0[0].weight)


def test_prior_moco_queue_pointers_advance():
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=20, local_queue_size=50, split_bn_groups=4,
                      patch_fill="none")
    im_q, im_k, map_q, map_k = _batch(n=8)
    ptr_g, ptr_l = 0, 0
    for _step in range(3):
        before = model.local_queue.keys.clone()
        out = model(im_q, im_k, map_q, map_k)
        ptr_g = (ptr_g + 8) % 20
        n_p = int(out["n_patches"])
        assert n_p == 96
        written = (torch.arange(min(n_p, 50)) + ptr_l + max(0, n_p - 50)) % 50
        ptr_l = (ptr_l + n_p) % 50
        assert int(model.queue.ptr) == ptr_g and int(model.local_queue.ptr) == ptr_l
        assert not torch.equal(before, model.local_queue.keys)
        torch.testing.assert_close(model.local_queue.keys[written].norm(dim=1), torch.ones(len(written)))


@pytest.mark.parametrize("shuffle", ["split-bn", "ddp"])
def test_prior_moco_shuffle_is_undone(shuffle):
    """In eval mode BN is per sample, so shuffled key encoding must equal unshuffled."""
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, shuffle=shuffle,
                      split_bn_groups=4).eval()
    plain = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, shuffle="none").eval()
    plain.load_state_dict(model.state_dict())
    im_q, im_k, map_q, map_k = _batch()
    ids, valid = sample_patch_ids(map_q, map_k, 16, min_pixels=1)
    masks = patch_masks(map_k, ids, valid, (8, 8))
    k1, kl1 = model._encode_keys(im_k, masks)
    k2, kl2 = plain._encode_keys(im_k, masks)
    torch.testing.assert_close(k1, k2)
    torch.testing.assert_close(kl1, kl2)
    if shuffle == "split-bn":
        assert sum(isinstance(m, SplitBatchNorm) for m in model.encoder_k.modules()) == 2
        assert sum(isinstance(m, SplitBatchNorm) for m in model.encoder_q.modules()) == 2


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel")


@functools.lru_cache(maxsize=1)
def _photos():
    """Eight shipped colour photos at height 64 with SLIC superpixels (ids 1..n)."""
    from skimage import data, transform
    from skimage.segmentation import slic

    out = []
    for name in PHOTOS:
        img = getattr(data, name)()
        img = transform.resize(img, (64, int(64 * img.shape[1] / img.shape[0])), anti_aliasing=True)
        img = (img * 255).astype(np.uint8)
        out.append((img, slic(img, n_segments=12, compactness=10, start_label=1)))
    return out


def _photo_batch(aug, g):
    """Two MoCo-v2 views of each photo: im_q, im_k (8 x 3 x S x S), map_q, map_k (8 x S x S)."""
    views = [[], [], [], []]
    for img, lab in _photos():
        xq, mq = aug(img, lab, generator=g)
        xk, mk = aug(img, lab, generator=g)
        for v, t in zip(views, (xq, xk, mq, mk), strict=True):
            v.append(t)
    return [torch.stack(v) for v in views]


def test_prior_moco_training_lowers_the_loss():
    """20 SGD steps on fresh MoCo-v2 views of 8 real photos lower the loss.

    The queues are first filled with real keys (no-grad forwards): the loss against a
    queue of random unit vectors is lower than against real keys, so comparing a step
    with a random queue to one with a full queue would measure the queue, not learning.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    aug = PairedAugment(size=32, scale=(0.3, 1.0))
    model = PriorMoCo(TinyBackbone(width=16), dim=32, queue_size=256, local_queue_size=256,
                      momentum=0.99, split_bn_groups=4)
    with torch.no_grad():
        for _ in range(256 // 8):
            model(*_photo_batch(aug, g))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _step in range(20):
        out = model(*_photo_batch(aug, g))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        assert out["n_patches"] > 0
    print("losses", [round(v, 3) for v in losses])
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5  # measured: -1.5 and -2.3 (seeds 0, 1)


def test_prior_moco_runs_under_bf16_autocast():
    """CPU bf16 autocast stands in for CUDA here: losses and logits stay fp32."""
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, split_bn_groups=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*_batch())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert model.queue.keys.dtype == torch.float32
    out["loss"].backward()


def test_prior_moco_on_a_real_backbone_exports_a_loadable_prior(tmp_path):
    """Smoke test: ResNet-18 (plain, stride 32) trains one step; the key backbone's weights
    load back through build_backbone as a (dilated) prior extractor."""
    backbones = pytest.importorskip("model.backbones")
    torch.manual_seed(0)
    bb = backbones.build_backbone("resnet18", weights="none", dilated=False)
    model = PriorMoCo(bb, queue_size=32, local_queue_size=32, split_bn_groups=2,
                      max_patch_pixels=64 * 64,  # no upper bound: the patches are a quarter view
                      patch_fill="none")
    assert model.encoder_q.head_global[0].in_features == 512  # mlp_hidden default = channels
    g = torch.Generator().manual_seed(0)
    im = torch.randn(4, 3, 64, 64, generator=g)
    maps = _grid_maps(4, 64, 2)  # 4 patches of 32 x 32 = one cell each at stride 32
    out = model(im, im + 0.1 * torch.randn(im.shape, generator=g), maps, maps)
    assert out["n_patches"].item() == 16
    out["loss"].backward()
    path = tmp_path / "prior.pt"
    torch.save({"backbone": model.backbone_state_dict(), "backbone_name": "resnet18"}, path)
    prior = backbones.build_backbone("resnet18", weights=str(path), dilated=True)
    for key, value in model.backbone_state_dict().items():
        assert torch.equal(prior.state_dict()[key], value)


def _two_ranks(worker, tmp_path):
    """Run ``worker(rank, 2, port, tmp_path)`` as two forked gloo ranks on a free port;
    returns what each rank saved (rank0.pt, rank1.pt)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def _ddp_worker(rank, world, port, result_dir):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same weights on both ranks
        model = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, shuffle="ddp")
        plain = PriorMoCo(TinyBackbone(), dim=16, queue_size=64, local_queue_size=64, shuffle="none")
        plain.load_state_dict(model.state_dict())
        im_q, im_k, map_q, map_k = _batch(n=4, seed=rank)  # different data per rank
        ids, valid = sample_patch_ids(map_q, map_k, 16, min_pixels=1)
        masks = patch_masks(map_k, ids, valid, (8, 8))
        model.eval(), plain.eval()
        k1, kl1 = model._encode_keys(im_k, masks)
        k2, kl2 = plain._encode_keys(im_k, masks)
        model.train()
        out = model(im_q, im_k, map_q, map_k)
        out["loss"].backward()
        torch.save({"dk": (k1 - k2).abs().max().item(), "dkl": (kl1 - kl2).abs().max().item(),
                    "ptr": int(model.queue.ptr), "lptr": int(model.local_queue.ptr),
                    "n_patches": int(out["n_patches"]), "keys": model.queue.keys[:8].clone()},
                   f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_prior_moco_ddp_shuffle_with_two_gloo_processes(tmp_path):
    """shuffle='ddp': keys after the cross-rank shuffle equal unshuffled keys (eval-mode BN);
    both ranks enqueue the keys of both ranks (same queue, pointer advanced by 2 N)."""
    r0, r1 = _two_ranks(_ddp_worker, tmp_path)
    for r in (r0, r1):
        assert r["dk"] < 1e-5 and r["dkl"] < 1e-5
        assert r["ptr"] == 8  # 2 ranks x 4 images
        assert r["lptr"] == (2 * r["n_patches"]) % 64
    assert torch.equal(r0["keys"], r1["keys"])  # gathered in rank order on both ranks


def test_mean_pairwise_cosine_matches_a_loop():
    from model.prior.moco import mean_pairwise_cosine

    z = torch.randn(7, 5)
    u = torch.nn.functional.normalize(z, dim=1)
    slow = sum(float(u[i] @ u[j]) for i in range(7) for j in range(7) if i != j) / 42
    assert abs(float(mean_pairwise_cosine(z)) - slow) < 1e-6
    same = torch.ones(4, 3) * torch.tensor([1.0, 2.0, 3.0])
    assert abs(float(mean_pairwise_cosine(same)) - 1) < 1e-6  # collapsed: cosine 1
    assert float(mean_pairwise_cosine(z[:1])) == 0.0


@pytest.mark.parametrize("groups,n", [(4, 8), (2, 6), (4, 6)])
def test_split_batchnorm_channels_last_matches_nchw_and_stays_channels_last(groups, n):
    # The channels_last path (no layout round trip) against the NCHW path: outputs,
    # gradients of input, weight and bias, and running statistics over two steps.
    torch.manual_seed(groups * n)
    ref = SplitBatchNorm(5, groups, momentum=0.3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    cl = SplitBatchNorm(5, groups, momentum=0.3)
    cl.load_state_dict(ref.state_dict())
    for _ in range(2):
        x = (torch.randn(n, 5, 4, 3) * 3 + 1).requires_grad_(True)
        xc = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
        gy = torch.randn(n, 5, 4, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, yc = ref(x), cl(xc)
        assert yc.is_contiguous(memory_format=torch.channels_last) and not yc.is_contiguous()
        torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-5)
        (y * gy).sum().backward()
        (yc * gy).sum().backward()
        torch.testing.assert_close(xc.grad, x.grad, rtol=1e-4, atol=1e-5)
        assert xc.grad.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cl.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cl.running_mean, ref.running_mean)
        torch.testing.assert_close(cl.running_var, ref.running_var)
        assert int(cl.num_batches_tracked) == int(ref.num_batches_tracked)


def test_split_batchnorm_channels_last_gradcheck():
    from model.prior.moco import _SplitBNChannelsLast

    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64).to(memory_format=torch.channels_last)
    w = torch.rand(3, dtype=torch.float64) + 0.5
    b = torch.randn(3, dtype=torch.float64)
    for t in (x, w, b):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: _SplitBNChannelsLast.apply(x, w, b, 2, 1e-5)[0],
                                    (x, w, b))


# ============================================================================ the local patches
# issue 18 §3, §4: the paper's crop reading (boxes, crops, the loss against a slow loop, the
# queue, correspondence across views) and the patch rule (area window, slot filling, the
# upgrade of configs written before it). Same stand-in backbone and grid maps as above.
# ------------------------------------------------------------------------------ boxes, crops
def test_patch_boxes_known_answer_and_invalid_slots():
    m = torch.zeros(2, 6, 7, dtype=torch.long)
    m[0, 1:4, 2:6] = 5  # a 3 x 4 block
    m[0, 5, 0] = 5  # and one far pixel of the same id: the box spans both
    m[1, 2:3, 3:4] = 9
    ids = torch.tensor([[5, 2], [9, 9]])
    valid = torch.tensor([[True, False], [True, True]])
    boxes = patch_boxes(m, ids, valid)
    assert boxes.tolist() == [[[1, 0, 5, 5], [0, 0, 5, 6]],  # invalid slot: the whole view
                              [[2, 3, 2, 3], [2, 3, 2, 3]]]


@pytest.mark.parametrize("size", [3, 16, 48])
def test_crop_patches_equal_interpolate_of_each_box(size):
    """Every crop is F.interpolate (bilinear, align_corners=False) of its box slice: up- and
    down-sampling, boxes at the border, one-pixel boxes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 30, 41, generator=g)
    boxes = torch.tensor([[[0, 0, 29, 40], [5, 7, 5, 7]],
                          [[10, 30, 29, 40], [0, 0, 3, 40]],
                          [[2, 3, 27, 9], [12, 12, 20, 39]]])
    out = crop_patches(images, boxes, size)
    assert out.shape == (3, 2, 3, size, size)
    for n in range(3):
        for p in range(2):
            t, left, b, r = boxes[n, p].tolist()
            ref = F.interpolate(images[n:n + 1, :, t:b + 1, left:r + 1], (size, size),
                                mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(out[n, p], ref, rtol=0, atol=2e-5)


def _coded_photo(cells=4, side=64):
    """An image whose colour encodes its superpixel id (cells x cells square blocks)."""
    lab = _grid_maps(1, side, cells)[0].numpy()  # ids 1..cells^2
    img = np.stack([lab * 12, 255 - lab * 12, np.full_like(lab, 128)], axis=-1).astype(np.uint8)
    return img, lab


def test_crops_of_both_views_show_the_same_superpixel():
    """Crop p of the query view and crop p of the key view come from the superpixel ids[p]:
    on an image whose colour encodes the id, the centre pixel of both crops decodes to it,
    through MoCo-v2 crops and flips of each view."""
    img, lab = _coded_photo()
    aug = PairedAugment(size=48, scale=(0.3, 1.0), photometric=False, mean=(0, 0, 0), std=(1, 1, 1))
    g = torch.Generator().manual_seed(3)
    views = [aug(img, lab, generator=g) for _ in range(16)]  # 8 pairs
    im_q = torch.stack([v[0] for v in views[::2]])
    im_k = torch.stack([v[0] for v in views[1::2]])
    map_q = torch.stack([v[1] for v in views[::2]])
    map_k = torch.stack([v[1] for v in views[1::2]])
    for fill in ("none", "repeat"):
        model = PriorMoCo(TinyBackbone(), dim=8, queue_size=16, local_queue_size=16,
                          local_patches="crop", patches_per_image=3, patch_size=9,
                          min_patch_pixels=1, max_patch_pixels=48 * 48, patch_fill=fill)
        torch.manual_seed(0)
        ids, valid, crops_q, crops_k = model.local_inputs(im_q, im_k, map_q, map_k, (12, 12))
        assert crops_q.shape == crops_k.shape == (8, 3, 3, 9, 9)
        assert valid.all()
        for crops in (crops_q, crops_k):
            code = crops[:, :, 0, 4, 4] * 255 / 12  # the centre pixel's red channel / 12
            torch.testing.assert_close(code, ids.float(), rtol=0, atol=0.05)


# ------------------------------------------------------------------------------ the model
def _crop_batch(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    im_q, im_k = torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)
    maps = _grid_maps(n, size, 4)
    map_k = maps.clone()
    map_k[:, :, : size // 4] = 0  # the key view misses the first column of patches
    return im_q, im_k, maps, map_k


def _loop_embed(encoder, crop):
    """One crop through the backbone, global average pool, local head, L2 norm (eval BN)."""
    f = encoder.backbone(crop.unsqueeze(0))[encoder.backbone.high_stage]
    z = encoder.head_local(f.mean(dim=(2, 3)))[0]
    return z / z.norm()


def _loop_box(m, i):
    ys, xs = np.nonzero(m.numpy() == i)
    return ys.min(), xs.min(), ys.max(), xs.max()


def test_crop_mode_loss_and_queue_match_a_slow_loop():
    """--local-patches crop: one patch per image, its bounding box cropped from each view
    (found pixel by pixel), resized by F.interpolate, encoded alone by the query / key
    encoder; eq. 2 against the patch queue summed in Python; then the keys enter the
    queue at its pointer."""
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=32, local_queue_size=64, loss="local",
                      local_patches="crop", patch_size=12, shuffle="none", momentum=1.0,
                      temperature=0.3).eval()  # eval: per-sample BN, so a loop can match
    im_q, im_k, map_q, map_k = _crop_batch()
    queue = model.local_queue.keys.clone()
    torch.manual_seed(7)
    out = model(im_q, im_k, map_q, map_k)
    torch.manual_seed(7)  # the step's first random draw is the patch sample
    lo, hi = default_window((32, 32), (8, 8))
    ids, valid = sample_patch_ids(map_q, map_k, 1, min_pixels=lo, max_pixels=hi)
    assert valid.all() and int(out["n_patches"]) == 8
    losses, keys = [], []
    with torch.no_grad():
        for n in range(8):
            i = int(ids[n, 0])
            crops = []
            for im, m in ((im_q, map_q), (im_k, map_k)):
                t, left, b, r = _loop_box(m[n], i)
                crops.append(F.interpolate(im[n:n + 1, :, t:b + 1, left:r + 1], (12, 12),
                                           mode="bilinear", align_corners=False)[0])
            q = _loop_embed(model.encoder_q, crops[0])
            k = _loop_embed(model.encoder_k, crops[1])
            pos = float(torch.exp(q @ k / 0.3))
            neg = sum(float(torch.exp(q @ queue[j] / 0.3)) for j in range(64))
            losses.append(-np.log(pos / (pos + neg)))
            keys.append(k)
    assert float(out["loss_local"]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert int(model.local_queue.ptr) == 8
    torch.testing.assert_close(model.local_queue.keys[:8], torch.stack(keys), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.local_queue.keys[8:], queue[8:])


def test_crop_mode_trains_the_query_encoder_only_and_shuffle_is_undone():
    torch.manual_seed(0)
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=32, local_queue_size=32,
                      local_patches="crop", patch_size=16, split_bn_groups=4)
    out = model(*_crop_batch())
    assert model.patches_per_image == 1 and int(out["n_patches"]) == 8
    out["loss"].backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.encoder_q.head_local[0].weight.grad is not None
    # in eval mode (per-sample BN) the shuffled key encoding equals the unshuffled one
    plain = PriorMoCo(TinyBackbone(), dim=16, queue_size=32, local_queue_size=32,
                      local_patches="crop", patch_size=16, shuffle="none").eval()
    model.eval()
    plain.load_state_dict(model.state_dict())
    crops = torch.randn(8, 1, 3, 16, 16)
    im_k = torch.randn(8, 3, 32, 32)
    for a, b in zip(model._encode_keys(im_k, crops), plain._encode_keys(im_k, crops), strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ the rule
def test_max_pixels_bounds_the_eligible_ids():
    m = torch.zeros(1, 8, 8, dtype=torch.long)
    m[0, :, :4] = 1  # 32 px
    m[0, :4, 4:] = 2  # 16 px
    m[0, 4:, 4:6] = 3  # 8 px
    ids, valid = sample_patch_ids(m, m, 4, min_pixels=8, max_pixels=16)
    assert sorted(ids[0][valid[0]].tolist()) == [2, 3]
    ids, valid = sample_patch_ids(m, m, 4, min_pixels=8)
    assert sorted(ids[0][valid[0]].tolist()) == [1, 2, 3]


def test_fill_slots_copies_usable_slots_uniformly():
    valid = torch.tensor([[True, True, True, False, False, False]] * 4000 + [[False] * 6])
    source, filled = fill_slots(valid, generator=torch.Generator().manual_seed(0))
    assert filled[:-1].all() and not filled[-1].any()
    assert torch.equal(source[:-1, :3], torch.arange(3).expand(4000, 3))
    counts = torch.bincount(source[:-1, 3:].flatten(), minlength=3)
    assert counts.numel() == 3 and (counts - 4000).abs().max() < 4000 * 0.06  # 12,000 draws


def test_repeat_fill_fills_every_slot_with_the_images_own_patches():
    torch.manual_seed(0)
    im_q, im_k, map_q, map_k = _crop_batch()  # 12 usable ids per image, 16 slots
    model = PriorMoCo(TinyBackbone(), dim=16, queue_size=32, local_queue_size=32,
                      patches_per_image=16, min_patch_pixels=1, patch_fill="repeat")
    ids, valid, masks_q, _ = model.local_inputs(im_q, im_k, map_q, map_k, (8, 8))
    assert valid.all()
    for n in range(8):
        assert sorted(set(ids[n].tolist())) == [i for i in range(1, 17) if i % 4 != 1]  # 12 + 4 copies
        for p in range(16):  # a copied slot shows its id's mask
            j = int((ids[n] == ids[n, p]).nonzero()[0])
            torch.testing.assert_close(masks_q[n, p], masks_q[n, j])
    assert default_window((224, 224), (7, 7)) == (128, 3136)
    assert default_window((128, 128), (4, 4)) == (128, 1024)


def test_configs_from_before_the_rule_resume_with_their_own_rule():
    from model.prior.config import PriorConfig, check_resume_config, upgrade_saved_config
    from pipeline.settings import config_dict

    old = {**config_dict(PriorConfig(dataset="pascal", crop=224)), "min_patch_pixels": 0,
           "patches_per_image": 16}
    for key in ("patch_fill", "max_patch_pixels", "local_patches", "patch_size"):
        old.pop(key)
    new = upgrade_saved_config(old)
    assert (new["min_patch_pixels"], new["max_patch_pixels"], new["patch_fill"]) == (512, 50176, "none")
    assert upgrade_saved_config({**old, "min_patch_pixels": 300})["min_patch_pixels"] == 300
    assert upgrade_saved_config(new) == new  # today's configs pass unchanged
    same = PriorConfig(**{k: v for k, v in new.items() if k in PriorConfig.__dataclass_fields__})
    check_resume_config(same, old)  # the upgraded rule is the checkpoint's: no refusal
    with pytest.raises(ValueError, match="patch_fill"):
        check_resume_config(PriorConfig(**{**same.__dict__, "patch_fill": "repeat"}), old)


def _ddp_crop_worker(rank, world, port, result_dir):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        kw = dict(dim=16, queue_size=64, local_queue_size=64, local_patches="crop", patch_size=16)
        torch.manual_seed(0)  # same weights on both ranks
        model = PriorMoCo(TinyBackbone(), shuffle="ddp", **kw)
        plain = PriorMoCo(TinyBackbone(), shuffle="none", **kw)
        plain.load_state_dict(model.state_dict())
        im_q, im_k, map_q, map_k = _crop_batch(n=4, seed=rank)  # different data per rank
        crops = torch.randn(4, 1, 3, 16, 16, generator=torch.Generator().manual_seed(rank))
        model.eval(), plain.eval()
        k1, kl1 = model._encode_keys(im_k, crops)
        k2, kl2 = plain._encode_keys(im_k, crops)
        model.train()
        out = model(im_q, im_k, map_q, map_k)
        out["loss"].backward()
        torch.save({"dk": (k1 - k2).abs().max().item(), "dkl": (kl1 - kl2).abs().max().item(),
                    "lptr": int(model.local_queue.ptr), "n_patches": int(out["n_patches"]),
                    "keys": model.local_queue.keys[:8].clone()}, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_crop_mode_ddp_shuffle_with_two_gloo_processes(tmp_path):
    """shuffle='ddp' with crops: the key crops travel with the key images through MoCo's
    cross-rank shuffle (keys equal the unshuffled ones in eval mode), and both ranks enqueue
    both ranks' patch keys in rank order."""
    r0, r1 = _two_ranks(_ddp_crop_worker, tmp_path)
    for r in (r0, r1):
        assert r["dk"] < 1e-5 and r["dkl"] < 1e-5
        assert r["n_patches"] == 4 and r["lptr"] == 8  # one patch per image, 2 ranks x 4
    assert torch.equal(r0["keys"], r1["keys"])


def test_the_demo_keeps_the_rule_it_had():
    """`make demo` computes what it did before the rule: its preset (96 px, the whole view,
    no filling) draws the same patches and masks as the old sampler (no upper bound, no
    extra random draw)."""
    from model.prior.config import PriorConfig, finalize_config
    from model.prior.patches import patch_masks

    cfg = finalize_config(PriorConfig(dataset="demo"))
    assert (cfg.min_patch_pixels, cfg.max_patch_pixels, cfg.patch_fill, cfg.patches_per_image,
            cfg.local_patches) == (96, 128 * 128, "none", 16, "pooled")
    model = PriorMoCo(TinyBackbone(), dim=8, queue_size=16, local_queue_size=16,
                      min_patch_pixels=96, max_patch_pixels=128 * 128, patch_fill="none")
    g = torch.Generator().manual_seed(0)
    map_q = torch.randint(1, 60, (4, 128, 128), generator=g) // 3 * 3  # blocky ids
    map_k = map_q.roll(7, dims=2)
    im = torch.zeros(4, 3, 128, 128)
    torch.manual_seed(5)
    ids, valid, masks_q, masks_k = model.local_inputs(im, im, map_q, map_k, (32, 32))
    torch.manual_seed(5)
    ids0, valid0 = sample_patch_ids(map_q, map_k, 16, min_pixels=96)  # the old call
    assert torch.equal(ids, ids0) and torch.equal(valid, valid0)
    torch.testing.assert_close(masks_q, patch_masks(map_q, ids0, valid0, (32, 32)), rtol=0, atol=0)
    torch.testing.assert_close(masks_k, patch_masks(map_k, ids0, valid0, (32, 32)), rtol=0, atol=0)
