"""The local patches (issue 18 §3, §4): the paper's crop reading (boxes, crops, the loss
against a slow loop, the queue, correspondence across views) and the patch rule (area
window, slot filling, the upgrade of configs written before it)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.prior.augment import PairedAugment
from model.prior.moco import PriorMoCo
from model.prior.patch_crops import crop_patches, patch_boxes
from model.prior.patch_rule import default_window, fill_slots
from model.prior.patches import sample_patch_ids


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


def _grid_maps(n, size, cells):
    """N x size x size maps of cells x cells square superpixels, ids 1..cells**2."""
    r = torch.arange(size) * cells // size
    m = (r.view(-1, 1) * cells + r.view(1, -1) + 1).long()
    return m.expand(n, size, size).clone()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_crop_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
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
