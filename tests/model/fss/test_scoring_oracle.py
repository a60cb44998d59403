"""Oracles for the one test-time path: resize (model.fss.transforms.test_transform) and
scoring at the original resolution (model.fss.metrics.episode_confusions / map_to_original,
model.fss.regions), the functions the evaluator calls.

A prediction made from the label itself must score ~1 at every image size: smaller than,
equal to and larger than the crop, portrait and landscape, odd sizes. Two oracles:

- soft: the label's signed distance goes through the *image* path of ``test_transform``
  (what the network sees); fg logit = that distance. Resolution does not limit it, so it
  isolates the geometry: >= 0.99 at crop 473 and at a demo-sized crop.
- hard: the canvas label of ``test_transform`` (nearest neighbour, OpenCV's floor rule)
  as one-hot logits. At crop 473 >= 0.99; at small crops one canvas pixel covers 5-9
  original pixels and the nearest rule shifts the label by up to half of one, which caps
  it near 0.95 whatever the scoring (docs/fss.md holds both tables).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from model.fss import transforms as T
from model.fss.metrics import episode_confusions, map_to_original, upsample_logits
from model.fss.regions import RegionMeter

SIZES = [(97, 131), (131, 97), (300, 400), (400, 300), (473, 473), (375, 500), (500, 375),
         (480, 854), (854, 480)]
CROPS = [473, 97]  # the paper's crop and a demo-sized one


def ellipse_label(h, w):
    """An off-centre ellipse (~26% of the image) of 1 on 0; the top two rows 255."""
    yy, xx = np.mgrid[0:h, 0:w]
    lab = ((((yy - h * 0.55) / (h * 0.3)) ** 2 + ((xx - w * 0.45) / (w * 0.28)) ** 2) <= 1)
    lab = lab.astype(np.uint8)
    lab[:2] = 255
    return lab


def signed_distance(lab):
    fg = lab == 1
    return (ndimage.distance_transform_edt(fg) - ndimage.distance_transform_edt(~fg)).astype(np.float32)


def fg_iou(conf):
    return conf[1, 1] / (conf[1, 1] + conf[0, 1] + conf[1, 0])


def soft_canvas(lab, crop):
    """The label's signed distance through test_transform's image path (un-normalised)."""
    d = np.repeat(signed_distance(lab)[..., None], 3, axis=2)
    x, _ = T.test_transform(d, lab, size=crop)
    return torch.from_numpy(x[0] * T.STD[0] + T.MEAN[0])  # S x S, 0 on the padding


def score(logits, lab):
    """The evaluator's scoring: one episode, label padded like model.fss.data.collate."""
    h, w = lab.shape
    padded = torch.full((1, h + 3, w + 5), 255, dtype=torch.long)
    padded[0, :h, :w] = torch.from_numpy(lab.astype(np.int64))
    return episode_confusions(logits, padded, torch.tensor([[h, w]]))[0].numpy()


def test_test_size_is_pfenet_resize():
    """PFENet ``Resize`` (``resized_val: True``): the longer side always becomes the crop,
    smaller images are scaled *up*, both sides floored to a multiple of 8."""
    assert T.test_size(375, 500, 473) == (352, 472)
    assert T.test_size(500, 375, 473) == (472, 352)
    assert T.test_size(97, 131, 473) == (344, 472)  # scaled up (test_Resize would keep it)
    assert T.test_size(473, 473, 473) == (472, 472)
    assert T.test_size(480, 854, 97) == (48, 96)
    assert T.test_size(50, 40, 129) == (128, 96)
    assert T.test_size(1, 900, 97) == (1, 96)  # never 0 pixels
    x, y = T.test_transform(np.full((97, 131, 3), 255, np.uint8), np.ones((97, 131), np.uint8), size=473)
    assert (y[:344, :472] == 1).all() and (y[344:] == 255).all() and (y[:, 472:] == 255).all()
    np.testing.assert_allclose(x[:, 300, 400], (255 - T.MEAN) / T.STD, rtol=1e-6)  # image block
    np.testing.assert_allclose(x[:, -1, -1], -T.MEAN / T.STD, rtol=1e-6)  # pad 0 before normalising


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("h,w", SIZES)
def test_soft_oracle_scores_one(h, w, crop):
    lab = ellipse_label(h, w)
    fg = soft_canvas(lab, crop)
    logits = torch.stack([torch.zeros_like(fg), fg])[None]  # 1 x 2 x S x S
    assert fg_iou(score(logits, lab)) >= 0.99
    # the public one-episode helper is the same path
    pred = upsample_logits(logits, (h, w))
    valid = lab != 255
    inter = ((pred.numpy() == 1) & (lab == 1) & valid).sum()
    assert inter == score(logits, lab)[1, 1]


@pytest.mark.parametrize("h,w", SIZES)
def test_hard_oracle_scores_one_at_473(h, w):
    """>= 0.989: the nearest rule puts canvas label pixel i at original ``i * H / nh``, half
    a canvas pixel (<= 0.9 original pixel here) off the image's ``(i + 0.5) H / nh - 0.5``."""
    lab = ellipse_label(h, w)
    _, y = T.test_transform(np.zeros((h, w, 3), np.uint8), lab, size=473)
    fg = torch.from_numpy((y == 1).astype(np.float32))
    assert fg_iou(score(torch.stack([1 - fg, fg])[None], lab)) >= 0.989


@pytest.mark.parametrize("h,w", SIZES)
def test_hard_oracle_at_a_small_crop_is_only_resolution_bound(h, w):
    lab = ellipse_label(h, w)
    _, y = T.test_transform(np.zeros((h, w, 3), np.uint8), lab, size=97)
    fg = torch.from_numpy((y == 1).astype(np.float32))
    assert fg_iou(score(torch.stack([1 - fg, fg])[None], lab)) >= 0.94


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("h,w", SIZES)
def test_region_map_oracle(h, w, crop):
    """Region maps (qgnet-eval regions) go through the same inverse: a [0, 1] ramp of the
    label's signed distance (0.5 on the boundary) has IoU ~1 at threshold 0.5, at the
    canvas resolution and, at 473, on the network's feature grid (stride 8)."""
    lab = ellipse_label(h, w)
    ramp = max(h, w) / crop * 16.0
    rmap = (soft_canvas(lab, crop) / ramp + 0.5).clamp(0, 1)[None, None]  # 1 x 1 x S x S
    maps = [rmap]
    if crop == 473:
        g = (crop - 1) // 8 + 1
        maps.append(F.interpolate(rmap, size=(g, g), mode="bilinear", align_corners=True))
    for m in maps:
        meter = RegionMeter(thresholds=[0.5])
        meter.update(m, torch.from_numpy(lab.astype(np.int64)), crop=crop)
        assert meter.iou()[0.5] >= 0.99


def test_map_to_original_shapes_and_padding_never_leaks():
    maps = torch.zeros(2, 3, 16, 16)
    maps[..., 9:, :] = 100.0  # padding rows of a 9 x 16 block
    out = map_to_original(maps, (45, 80))  # test_size(45, 80, 16) = (9, 16)
    assert out.shape == (2, 3, 45, 80) and out.abs().max() == 0
    coarse = map_to_original(torch.ones(1, 1, 5, 5), (45, 80), crop=33)  # feature-grid map
    assert coarse.shape == (1, 1, 45, 80) and torch.allclose(coarse, torch.ones_like(coarse))


# ---------------------------------------------------------------------------------------
# End to end: the evaluator (TestEpisodes, collate, run_episodes, regions) on mixed sizes
# ---------------------------------------------------------------------------------------
def _write_sized_folder(root, sizes, *, n_classes=8):
    """Folder dataset whose image is the label's signed distance as grey levels (a smooth
    ramp, 128 on the boundary) so that a model reading the image can be an oracle."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(1, n_classes + 1)) + "\n")
    for split, n in (("train", 16), ("val", 24)):
        names = []
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            lab = ellipse_label(h, w)
            cls = i % n_classes + 1
            mask = np.where(lab == 1, cls, lab).astype(np.uint8)
            ramp = max(h, w) / 97 * 16.0
            grey = np.clip(127.5 + 127.5 * signed_distance(lab) / ramp, 0, 255).astype(np.uint8)
            names.append(f"{split}{i:03d}")
            Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(root / "images" / f"{names[-1]}.png")
            Image.fromarray(mask).save(root / "masks" / f"{names[-1]}.png")
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


class ImageOracle(torch.nn.Module):
    """Reads the query's grey level back: fg logit = level - 127.5 on the canvas, the guided
    map = level / 255 on the stride-8 feature grid, no prior map."""
    use_prior_map = False

    def forward(self, query, supports, masks, return_maps=False):
        level = query[:, 0] * float(T.STD[0]) + float(T.MEAN[0])  # N x S x S (0 on the padding)
        logits = torch.stack([torch.zeros_like(level), level - 127.5], 1)
        s = query.shape[-1]
        grid = F.interpolate((level / 255).clamp(0, 1)[:, None], size=((s - 1) // 8 + 1,) * 2,
                             mode="bilinear", align_corners=True)
        return {"logits": logits, "aux": [], "guided_map": grid, "prior_map": None}


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    from pipeline.episode_stage import build_episodes
    from pipeline.mask_stage import build_mask_store

    base = tmp_path_factory.mktemp("sized")
    root, cache = _write_sized_folder(base / "data", SIZES), str(base / "cache")
    for split in ("train", "val"):
        build_mask_store("folder", split=split, cache_dir=cache, root=root, workers=1,
                         scheduler="sync", progress=False)
    build_episodes("folder", cache_dir=cache, folds=[0], shots=[1], n_episodes=8, echo=lambda s: None)
    return {"root": str(root), "cache": cache}


@pytest.mark.parametrize("crop", CROPS)
def test_evaluator_oracle_end_to_end(sized, crop):
    from model.fss.evaluate import evaluate
    from pipeline.episode_stage import load_test_episodes

    eps = load_test_episodes("folder", 0, 1, cache_dir=sized["cache"])
    res = evaluate(ImageOracle(), eps, dataset="folder", crop=crop, root=sized["root"],
                   cache_dir=sized["cache"], device="cpu", workers=0, progress=False, write=False,
                   regions=crop == 473, batch_size=3, per_episode=True)
    run = res["runs"][0]
    assert run["episodes"] == 8 and res["miou"]["mean"] >= 0.99
    from pipeline.mask_stage import locate_mask_store

    store = locate_mask_store("folder", "val", cache_dir=sized["cache"])
    longer = {max(store.get(int(q)).shape) for q in eps["query"][:8]}
    assert min(longer) < 473 < max(longer)  # queries smaller and larger than the crop
    inter = np.asarray(run["per_episode"]["inter"])
    union = np.asarray(run["per_episode"]["union"])
    assert (inter[:, 1] / union[:, 1] >= 0.99).all()  # every episode, not just the mean
    if crop == 473:  # the feature-grid guided map; at 97 the grid is 13 x 13 cells
        assert run["guided"]["iou"]["0.5"] >= 0.99


def test_evaluation_does_not_sync_per_episode(sized):
    """No ``.item()`` / ``int()`` / ``float()`` of a tensor per episode or batch
    (``aten._local_scalar_dense``, a host sync on CUDA): the count does not grow with the
    number of episodes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from model.fss.evaluate import run_episodes, test_loader
    from pipeline.episode_stage import load_test_episodes

    class CountScalars(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountScalars.calls += 1
            return func(*args, **(kwargs or {}))

    eps = load_test_episodes("folder", 0, 1, cache_dir=sized["cache"])
    counts = {}
    for limit in (3, 8):  # one batch vs three batches of up to 3 episodes
        loader = test_loader(eps, dataset="folder", crop=97, root=sized["root"],
                             cache_dir=sized["cache"], batch_size=3, limit=limit)
        CountScalars.calls = 0
        with CountScalars():
            r = run_episodes(ImageOracle(), loader, classes=np.asarray(eps["test_classes"]).tolist(),
                             device=torch.device("cpu"))
        assert r["episodes"] == limit and r["meter"].n_episodes == limit
        counts[limit] = CountScalars.calls
    assert counts[3] == counts[8] <= 2  # per run (the loss), not per episode or batch
