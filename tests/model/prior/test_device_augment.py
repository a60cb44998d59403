"""The device half of MoCo-v2 augmentation against the CPU path (model.prior.augment).

Oracles: torchvision's functional ops on one image at a time (``augment.photometric``) for
fixed parameters; the CPU path's own draws for the same seed; binomial and uniform
statistics of the parameters for MoCo v2's probabilities and ranges; an op-counting
dispatch mode for host syncs.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from skimage import data
from torch.utils._python_dispatch import TorchDispatchMode

from model.prior.augment import (
    MOCO_V2_AUGMENT,
    VIEW_PARAMS,
    PairedAugment,
    PairedCrop,
    ViewParams,
    photometric,
)
from model.prior.device_augment import (
    DevicePrefetcher,
    adjust_hue,
    augment_views,
    batch_to_device,
    gaussian_blur,
    plan_views,
)

MEAN = torch.tensor(MOCO_V2_AUGMENT["mean"]).view(3, 1, 1)
STD = torch.tensor(MOCO_V2_AUGMENT["std"]).view(3, 1, 1)
COL = {n: i for i, n in enumerate(VIEW_PARAMS)}


@pytest.fixture(scope="module")
def photo():
    """A real photo (astronaut, 256 x 256) and a map of 16 x 16 blocks with ids > 32767
    (the int16 transport must give them back)."""
    img = np.ascontiguousarray(data.astronaut()[::2, ::2])
    yy, xx = np.mgrid[:256, :256]
    pm = (40000 + (yy // 16) * 16 + xx // 16).astype(np.uint16)
    return img, pm


def crops(photo, n, *, size=48, seed0=0, **kw):
    img, pm = photo
    crop = PairedCrop(size=size, **kw)
    out = [crop(img, pm, generator=torch.Generator().manual_seed(seed0 + s)) for s in range(n)]
    return [torch.stack(t) for t in zip(*out, strict=True)]  # images, maps, params


def reference(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """One sample at a time with torchvision's ops: flip, photometric, normalise."""
    out = []
    for x, p in zip(images, params, strict=True):
        v = ViewParams(crop=(0, 0, 0, 0), flip=bool(p[COL["flip"]]), jitter=bool(p[COL["jitter"]]),
                       factors=tuple(p[COL["brightness"]:COL["hue"] + 1].tolist()),
                       order=tuple(int(o) for o in p[COL["order0"]:COL["order3"] + 1]),
                       gray=bool(p[COL["gray"]]), sigma=float(p[COL["sigma"]]))
        y = x.float() / 255
        y = y.flip(-1) if v.flip else y
        out.append((photometric(y, v) - MEAN) / STD)
    return torch.stack(out)


# ------------------------------------------------------------------ same parameters
def test_crop_draws_exactly_what_the_cpu_path_draws(photo):
    img, pm = photo
    cpu, dev = PairedAugment(size=40), PairedCrop(size=40)
    for seed in range(40):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for _ in range(2):  # q then k: the generators must stay in step
            p = cpu.draw(256, 256, g1)
            _, _, vec = dev(img, pm, generator=g2)
            assert torch.equal(vec, p.vector())
        assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("probs", [{}, {"p_jitter": 1.0, "p_gray": 0.5, "p_blur": 1.0}])
def test_device_views_equal_torchvision_for_fixed_parameters(photo, probs):
    images, maps, params = crops(photo, 48, **probs)
    x, m = augment_views(images, maps, params, plan_views(params))
    np.testing.assert_allclose(x.numpy(), reference(images, params).numpy(), atol=2e-5)
    flipped = params[:, COL["flip"]].bool()
    ids = maps.long() & 0xFFFF
    want = torch.where(flipped.view(-1, 1, 1), ids.flip(-1), ids)
    assert torch.equal(m, want) and m.dtype == torch.int64 and int(m.min()) >= 40000


@pytest.mark.parametrize("order", list(itertools.permutations(range(4)))[::5])
def test_every_jitter_order_matches(photo, order):
    images, maps, params = crops(photo, 6, p_jitter=1.0, p_gray=0.0, p_blur=0.0)
    params[:, COL["order0"]:COL["order3"] + 1] = torch.tensor(order, dtype=torch.float32)
    x, _ = augment_views(images, maps, params, plan_views(params))
    np.testing.assert_allclose(x.numpy(), reference(images, params).numpy(), atol=2e-5)


def test_hue_and_blur_match_torchvision_on_hand_made_inputs():
    import torchvision.transforms.functional as TF

    # every hue sector, grey pixels (max == min) and saturated ones
    rgb = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1],
                        [0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1], [0.2, 0.7, 0.4]])
    x = rgb.T.reshape(1, 3, 2, 5)
    for f in (-0.5, -0.1, 0.0, 0.07, 0.5):
        got = adjust_hue(x, torch.full((1, 1, 1, 1), f))
        torch.testing.assert_close(got, TF.adjust_hue(x[0], f)[None], atol=1e-6, rtol=0)
    img = torch.rand(3, 3, 20, 17, generator=torch.Generator().manual_seed(0))
    sig = torch.tensor([0.1, 0.9, 2.0])
    got = gaussian_blur(img, sig, radius=6)
    for i, s in enumerate(sig.tolist()):
        k = 2 * math.ceil(3 * s) + 1
        torch.testing.assert_close(got[i], TF.gaussian_blur(img[i], [k, k], [s, s]), atol=1e-6,
                                   rtol=0)


def test_end_to_end_close_to_the_cpu_path_for_the_same_seed(photo):
    """Same seeds through both paths: maps identical; images apart only by the uint8
    rounding of the resized crop (at most a few grey levels, a fraction of one on average)."""
    img, pm = photo
    cpu = PairedAugment(size=64)
    ref = [cpu(img, pm, generator=torch.Generator().manual_seed(s)) for s in range(32)]
    images, maps, params = crops(photo, 32, size=64)
    x, m = augment_views(images, maps, params, plan_views(params))
    assert torch.equal(m, torch.stack([r[1] for r in ref]))
    diff = ((x - torch.stack([r[0] for r in ref])) * STD).abs()  # in [0, 1] pixel units
    assert float(diff.mean()) < 1.5 / 255 / 2 and float(diff.max()) < 8 / 255


# ------------------------------------------------------------------ the distribution
def test_parameter_frequencies_and_ranges_are_moco_v2s():
    """The draws PairedCrop ships (the same as PairedAugment's: tested above)."""
    n = 3000
    aug = PairedAugment(size=8)
    g = torch.Generator().manual_seed(123)
    p = torch.stack([aug.draw(256, 256, g).vector() for _ in range(n)])  # n x 12

    def rate_ok(col, prob):
        k = float(p[:, col].sum())
        assert abs(k - n * prob) < 4 * math.sqrt(n * prob * (1 - prob)), (col, k / n, prob)

    rate_ok(COL["flip"], 0.5)
    rate_ok(COL["jitter"], 0.8)
    rate_ok(COL["gray"], 0.2)
    sig = p[:, COL["sigma"]]
    blurred = sig[sig > 0]
    assert abs(len(blurred) - n / 2) < 4 * math.sqrt(n / 4)
    assert float(blurred.min()) >= 0.1 and float(blurred.max()) <= 2.0
    jit = p[p[:, COL["jitter"]] > 0]
    b, c, s, h = MOCO_V2_AUGMENT["jitter"]
    for col, (lo, hi) in (("brightness", (1 - b, 1 + b)), ("contrast", (1 - c, 1 + c)),
                          ("saturation", (1 - s, 1 + s)), ("hue", (-h, h)),
                          ("sigma", (0.1, 2.0))):
        v = (blurred if col == "sigma" else jit[:, COL[col]]).numpy()
        assert v.min() >= lo and v.max() <= hi
        u = np.sort((v - lo) / (hi - lo))  # Kolmogorov-Smirnov against U(lo, hi)
        ks = np.max(np.maximum(np.arange(1, len(u) + 1) / len(u) - u, u - np.arange(len(u)) / len(u)))
        assert ks < 1.95 / math.sqrt(len(u)), (col, ks)  # alpha ~ 0.001
    # the order: a uniform random permutation of the four ops (torchvision's ColorJitter)
    orders = [tuple(int(o) for o in r) for r in jit[:, COL["order0"]:COL["order3"] + 1]]
    counts = np.array([orders.count(o) for o in itertools.permutations(range(4))])
    assert counts.sum() == len(orders)
    expected = len(orders) / 24
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 49.7  # chi-square, 23 dof, alpha 0.001
    no_jit = p[p[:, COL["jitter"]] == 0]
    assert torch.equal(no_jit[:, COL["brightness"]:COL["order3"] + 1],
                       torch.tensor([1.0, 1, 1, 0, 0, 1, 2, 3]).expand(len(no_jit), -1))


def test_output_statistics_match_the_cpu_path(photo):
    """Read off the images: grayscale and flip frequencies of the device outputs equal the
    CPU path's, sample by sample."""
    img, pm = photo
    cpu = PairedAugment(size=32)
    n = 80
    ref = torch.stack([cpu(img, pm, generator=torch.Generator().manual_seed(s))[0]
                       for s in range(n)])
    images, maps, params = crops(photo, n, size=32)
    x, _ = augment_views(images, maps, params, plan_views(params))

    def is_gray(t):
        u = t * STD + MEAN
        return (u.amax(1) - u.amin(1)).flatten(1).amax(1) < 1e-5

    assert torch.equal(is_gray(x), is_gray(ref))
    assert 0.05 < float(is_gray(x).float().mean()) < 0.4  # p_gray 0.2


# ------------------------------------------------------------------ no syncs, batches, devices
class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_device_side_augmentation_has_no_host_sync(photo):
    images, maps, params = crops(photo, 16, p_jitter=1.0, p_blur=1.0)
    plan = plan_views(params)
    with _Ops() as ops:
        augment_views(images, maps, params, plan)
    syncing = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item"}
    assert not syncing & set(ops.names), sorted(syncing & set(ops.names))
    assert "aten.index_copy_" in ops.names  # the subsets are really gathered / scattered


def test_batch_to_device_and_prefetcher_on_cpu(photo):
    images, maps, params = crops(photo, 8)
    batch = {"im_q": images, "im_k": images, "map_q": maps, "map_k": maps, "aug_q": params,
             "aug_k": params, "index": torch.arange(8), "skipped": torch.zeros(8, dtype=torch.long)}
    out = batch_to_device(batch, torch.device("cpu"))
    assert set(out) == {"im_q", "im_k", "map_q", "map_k", "index", "skipped"}
    assert out["im_q"].dtype == torch.float32 and out["map_q"].dtype == torch.int64
    torch.testing.assert_close(out["im_q"], reference(images, params), atol=2e-5, rtol=0)
    cl = batch_to_device(batch, torch.device("cpu"), channels_last=True)["im_k"]
    assert cl.is_contiguous(memory_format=torch.channels_last)
    fetched = list(DevicePrefetcher([batch, batch], torch.device("cpu")))
    assert len(fetched) == 2 and "plan_q" in fetched[0]
    again = batch_to_device(fetched[1], torch.device("cpu"))
    assert torch.equal(again["im_q"], out["im_q"]) and torch.equal(again["map_k"], out["map_k"])
    # a batch of the CPU path is only moved
    plain = {"im_q": out["im_q"], "im_k": out["im_k"], "map_q": out["map_q"], "map_k": out["map_k"]}
    moved = batch_to_device(plain, torch.device("cpu"))
    assert all(torch.equal(moved[k], plain[k]) for k in plain)


def test_shipped_bytes_are_a_quarter_of_the_cpu_paths(photo):
    img, pm = photo
    a = PairedAugment(size=224)(img, pm, generator=torch.Generator().manual_seed(0))
    b = PairedCrop(size=224)(img, pm, generator=torch.Generator().manual_seed(0))
    cpu_bytes = sum(t.nbytes for t in a)
    dev_bytes = sum(t.nbytes for t in b)
    assert cpu_bytes == 3 * 224 * 224 * 4 + 224 * 224 * 8
    assert dev_bytes == 3 * 224 * 224 + 224 * 224 * 2 + 12 * 4
    assert cpu_bytes / dev_bytes > 3.9


def test_plan_refuses_device_parameters_and_ids_beyond_uint16(photo):
    img, _ = photo
    with pytest.raises(ValueError, match="augment-on cpu"):
        PairedCrop(size=8)(img, np.full(img.shape[:2], 70000, np.int64))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="host copy"):
            plan_views(torch.zeros(2, 12, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(photo):
    images, maps, params = crops(photo, 32, size=64)
    plan = plan_views(params)
    x, m = augment_views(images, maps, params, plan)
    dev = torch.device("cuda")
    xd, md = augment_views(images.to(dev), maps.to(dev), params.to(dev), plan.to(dev))
    torch.testing.assert_close(xd.cpu(), x, atol=1e-4, rtol=0)
    assert torch.equal(md.cpu(), m)
    batch = {"im_q": images, "im_k": images, "map_q": maps, "map_k": maps, "aug_q": params,
             "aug_k": params, "skipped": torch.zeros(32)}
    got = batch_to_device(next(iter(DevicePrefetcher([batch], dev))), dev)
    assert got["im_q"].is_cuda and got["skipped"].device.type == "cpu"
    torch.testing.assert_close(got["im_q"].cpu(), x, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ through the loader
@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo):
    """Eight 128 x 128 crops of the photo as a folder dataset, and their block maps."""
    from PIL import Image

    from pipeline.store import ShardedStore

    img, pm = photo
    root = tmp_path_factory.mktemp("devaug") / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("thing\n")
    ids = [f"p{j}" for j in range(8)]
    corners = [(a, b) for a in (0, 64, 128) for b in (0, 64, 128)][:8]
    for i, (a, b) in zip(ids, corners, strict=True):
        Image.fromarray(img[a:a + 128, b:b + 128]).save(root / "images" / f"{i}.jpg", quality=95)
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "val.txt").write_text(ids[0] + "\n")
    store = ShardedStore.create(root.parent / "slic.zarr", ids=ids, hw=np.full((8, 2), 128),
                                maps="labels", dtype="uint16",
                                attrs={"kind": "superpixels", "dataset": "folder",
                                       "split": "train", "method": "slic"},
                                extras={"n_segments": ((), "int32")}, shard_size=4)
    maps = [pm[a:a + 128, b:b + 128] for a, b in corners]
    for k in range(store.n_shards):
        a, b = store.shard_range(k)
        store.write_shard(k, maps[a:b], extras={"n_segments": np.full(b - a, 64, np.int32)})
    return {"root": root, "store": root.parent / "slic.zarr"}


def _loader(folder, augment_on, workers, *, epoch=0, start=0):
    from model.prior.config import PriorConfig, finalize_config
    from model.prior.trainer import build_data
    from model.utils import DistInfo

    cfg = finalize_config(PriorConfig(dataset="folder", root=str(folder["root"]),
                                      patch_store=str(folder["store"]), backbone="resnet18",
                                      init="none", crop=32, batch_size=2, workers=workers,
                                      augment_on=augment_on, device="cpu", out="/tmp/unused"))
    _, sampler, loader = build_data(cfg, DistInfo(), device=torch.device("cpu"))
    sampler.set_epoch(epoch, start=start)
    return [batch_to_device(b, torch.device("cpu")) for b in DevicePrefetcher(loader, "cpu")]


def test_loader_paths_agree_and_resume_mid_epoch_gives_the_same_views(folder):
    """Per-sample seeded parameters: the device path's batches do not depend on the workers
    nor on where an epoch was entered (the resume case), and match the CPU path's."""
    full = _loader(folder, "device", 0, epoch=3)
    tail = _loader(folder, "device", 2, epoch=3, start=4)  # resumed after 2 batches of 2
    assert len(full) == 4 and len(tail) == 2
    for x, y in zip(full[2:], tail, strict=True):
        for k in ("im_q", "im_k", "map_q", "map_k", "index"):
            assert torch.equal(x[k], y[k]), k
    cpu = _loader(folder, "cpu", 0, epoch=3)
    for x, y in zip(full, cpu, strict=True):
        assert torch.equal(x["map_q"], y["map_q"]) and torch.equal(x["map_k"], y["map_k"])
        assert float(((x["im_q"] - y["im_q"]) * STD).abs().mean()) < 1.5 / 255 / 2
    assert not torch.equal(full[0]["im_q"], _loader(folder, "device", 0, epoch=4)[0]["im_q"])


def _raw_batches(folder, augment_on):
    from model.prior.config import PriorConfig, finalize_config
    from model.prior.trainer import build_data
    from model.utils import DistInfo

    cfg = finalize_config(PriorConfig(dataset="folder", root=str(folder["root"]),
                                      patch_store=str(folder["store"]), backbone="resnet18",
                                      init="none", crop=40, batch_size=4, workers=0,
                                      augment_on=augment_on, device="cpu", out="/tmp/unused"))
    _, sampler, loader = build_data(cfg, DistInfo(), device=torch.device("cpu"))
    sampler.set_epoch(1)
    return list(loader)


@pytest.mark.parametrize("augment_on", ["device", "cpu"])
def test_batches_are_bit_identical_to_zarrs_read_and_the_ix_map_view(folder, monkeypatch,
                                                                     augment_on):
    """Issue 20 §4 made the patch-map read (pipeline.zarr_shards) and the map view cheaper:
    the loader's batches must be exactly those of the zarr read and of ``np.ix_``."""
    from pipeline.store import ShardedStore

    fast = _raw_batches(folder, augment_on)

    def zarr_get(self, i):
        h, w = (int(v) for v in self.hw[i])
        return np.asarray(self._maps[i, :h, :w])

    def ix_view(self, patch_map, p, *, flip):
        from model.prior.augment import _nearest_index

        top, left, h, w = p.crop
        rows, cols = _nearest_index(top, h, self.size), _nearest_index(left, w, self.size)
        return patch_map[np.ix_(rows, cols[::-1] if flip and p.flip else cols)]

    monkeypatch.setattr(ShardedStore, "get", zarr_get)
    monkeypatch.setattr(PairedAugment, "_map_view", ix_view)
    slow = _raw_batches(folder, augment_on)
    assert len(fast) == len(slow) == 2
    for a, b in zip(fast, slow, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if torch.is_tensor(a[k]):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k
