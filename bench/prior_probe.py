"""Did the prior extractor learn anything? Superpixel-patch probes on a labelled dataset.

For every image of a train and a val split: backbone ``layer4`` features (the prior stage),
bilinearly upsampled to stride 8, mask-average-pooled over each SLIC superpixel of the
patch store -> one feature per patch, labelled with the patch's majority ground-truth class
(patches with < 50 % labelled pixels are dropped). Then

* **linear probe**: multinomial logistic regression on standardised train-patch features,
  accuracy and mean class accuracy on the val patches;
* **1-NN retrieval**: cosine nearest train patch for each val patch, accuracy.

* **patch retrieval across views** (``--views``): two MoCo-v2 views of every val image (the
  trainer's own ``PairedAugment``, fixed seeds, the same views for every encoder), up to 16
  patches per image visible in both (``sample_patch_ids``), layer-4 features pooled per
  patch (``pool_patches``, as the local loss does); top-1 = the nearest view-2 patch (cosine,
  among all patches of all val images) is the same patch of the same image. Unseen images,
  the backbone only (no projection head): does the encoder recognise a region after crop,
  flip, colour jitter, grey and blur?

Encoders compared: the exported prior (``prior_extractor.pt``), the same architecture at
its random init (``--random-seed``: the trainer's seed, so it is the run's starting point;
``--extra-seeds`` adds other inits for the spread), the random init with its BatchNorm
statistics re-estimated on the probe's train images (``--bn-images N``: a random network
probed with running mean 0 / var 1 is handicapped, and a trained encoder has adapted
statistics for free), and optionally ImageNet EfficientNet-Lite0 as a reference.

Example (CamVid as a folder dataset, stores from ``qgnet-prep superpixels``)::

    python -m bench.prior_probe --root /tmp/camvid/folder --masks ../shared/data/camvid \
        --train-store .../slic-train-*.zarr --val-store .../slic-val-*.zarr \
        --prior runs/prior/.../prior_extractor.pt --backbone resnet18 --imagenet-lite0 \
        --key camvid --out bench/results/prior_probe.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import add_out_argument, markdown_table, write_result
from model.backbones import build_backbone, read_prior_export
from pipeline.store import ShardedStore

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_mask(masks_root: Path, split: str, image_id: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(masks_root / split / "masks" / f"{image_id}.png"))


@torch.no_grad()
def patch_features(bb, ds, store: ShardedStore, ids, masks_root: Path, split: str, *,
                   scale: float, ignore: int, n_classes: int):
    """(P x C features, P labels) over the superpixels of ``ids``."""
    feats, labels = [], []
    for image_id in ids:
        img = ds.load_image(image_id)
        sp = store.get_by_id(image_id).astype(np.int64)  # H x W, 1..n
        gt = load_mask(masks_root, split, image_id)
        h, w = int(img.shape[0] * scale), int(img.shape[1] * scale)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        f = bb(((x - MEAN) / STD))["layer4"]  # 1 x C x h/32 x w/32
        hs, ws = -(-h // 8), -(-w // 8)
        f = F.interpolate(f, size=(hs, ws), mode="bilinear", align_corners=False)[0]  # C x hs x ws
        rows = np.minimum((np.arange(hs) + 0.5) * img.shape[0] / hs, img.shape[0] - 1).astype(int)
        cols = np.minimum((np.arange(ws) + 0.5) * img.shape[1] / ws, img.shape[1] - 1).astype(int)
        sp_small = torch.from_numpy(sp[np.ix_(rows, cols)]).reshape(-1)  # hs*ws
        n = int(sp.max())
        onehot = F.one_hot(sp_small, n + 1).float()[:, 1:]  # hs*ws x n
        count = onehot.sum(0)  # n
        pooled = (f.reshape(f.shape[0], -1) @ onehot) / count.clamp_min(1)  # C x n
        # majority label of each superpixel at full resolution
        valid = gt != ignore
        hist = np.bincount(sp[valid] * n_classes + gt[valid].astype(np.int64),
                           minlength=(n + 1) * n_classes).reshape(n + 1, n_classes)
        total = np.bincount(sp.reshape(-1), minlength=n + 1)
        hist, total = hist[1:], total[1:]
        keep = (count.numpy() > 0) & (hist.sum(1) >= 0.5 * total) & (total > 0)
        feats.append(pooled.T[torch.from_numpy(keep)])
        labels.append(hist.argmax(1)[keep])
    return torch.cat(feats).float(), torch.from_numpy(np.concatenate(labels))


@torch.no_grad()
def recalibrate_bn(bb, ds, ids, *, scale: float) -> None:
    """Re-estimate every BatchNorm's running statistics (cumulative average over ``ids`` at
    the probe's scale, train-mode forwards, weights untouched)."""
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    bb.train()
    for image_id in ids:
        img = ds.load_image(image_id)
        h, w = int(img.shape[0] * scale), int(img.shape[1] * scale)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        bb((x - MEAN) / STD)
    bb.eval()


def make_views(ds, store: ShardedStore, ids, *, crop: int, per_image: int, seed: int):
    """Two augmented views + patch maps of each image and the ids of up to ``per_image``
    patches visible in both (covering >= half a stride-32 cell in each view)."""
    from model.prior.augment import PairedAugment
    from model.prior.patches import sample_patch_ids

    aug = PairedAugment(size=crop)
    v1, v2, m1, m2 = [], [], [], []
    for i, image_id in enumerate(ids):
        img, sp = ds.load_image(image_id), store.get_by_id(image_id)
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        a, ma = aug(img, sp, g)
        b, mb = aug(img, sp, g)
        v1.append(a), v2.append(b), m1.append(ma), m2.append(mb)
    v1, v2, m1, m2 = torch.stack(v1), torch.stack(v2), torch.stack(m1), torch.stack(m2)
    pid, valid = sample_patch_ids(m1, m2, per_image, min_pixels=512,
                                  generator=torch.Generator().manual_seed(seed))
    return v1, v2, m1, m2, pid, valid


@torch.no_grad()
def view_retrieval(bb, views) -> dict:
    from model.prior.patches import pool_patches

    v1, v2, m1, m2, pid, valid = views
    f1 = torch.cat([bb(v1[i:i + 16])["layer4"] for i in range(0, len(v1), 16)])
    f2 = torch.cat([bb(v2[i:i + 16])["layer4"] for i in range(0, len(v2), 16)])
    p1 = F.normalize(pool_patches(f1, m1, pid, valid)[valid], dim=1)  # P x C
    p2 = F.normalize(pool_patches(f2, m2, pid, valid)[valid], dim=1)
    nn = (p1 @ p2.T).argmax(1)
    top1 = float((nn == torch.arange(len(p1))).float().mean())
    same_image = torch.arange(len(v1)).view(-1, 1).expand_as(pid)[valid]
    image_top1 = float((same_image[nn] == same_image).float().mean())
    return {"patches": len(p1), "top1": round(top1, 4), "same_image_top1": round(image_top1, 4),
            "chance": round(1 / max(len(p1), 1), 5)}


def linear_probe(xtr, ytr, xva, yva, n_classes: int, *, steps: int = 300, wd: float = 1e-4):
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xtr), ytr) + wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = lin(xva).argmax(1)
    return _scores(pred, yva, n_classes)


def nn_retrieval(xtr, ytr, xva, yva, n_classes: int):
    a, b = F.normalize(xtr, dim=1), F.normalize(xva, dim=1)
    pred = ytr[(b @ a.T).argmax(1)]
    return _scores(pred, yva, n_classes)


def _scores(pred, y, n_classes):
    acc = float((pred == y).float().mean())
    per = [float((pred[y == c] == c).float().mean()) for c in range(n_classes) if (y == c).any()]
    return {"acc": round(acc, 4), "mean_class_acc": round(float(np.mean(per)), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="folder dataset root (images/)")
    ap.add_argument("--masks", required=True, help="CamVid root with {split}/masks/NAME.png")
    ap.add_argument("--train-store", required=True)
    ap.add_argument("--val-store", required=True)
    ap.add_argument("--prior", action="append", default=[], help="prior_extractor.pt (repeatable)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--random-seed", type=int, default=0)
    ap.add_argument("--imagenet-lite0", action="store_true")
    ap.add_argument("--train-images", type=int, default=120)
    ap.add_argument("--val-images", type=int, default=0, help="every k-th val image (0 = all)")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--ignore", type=int, default=11)
    ap.add_argument("--extra-seeds", default="", help="more random inits, e.g. 1,2 (spread)")
    ap.add_argument("--bn-images", type=int, default=0,
                    help="also probe the random init with BN statistics re-estimated on this "
                         "many train images (0: skip)")
    ap.add_argument("--views", action="store_true", help="patch retrieval across two views")
    ap.add_argument("--view-store", help="patch store of the val split for --views (default: --val-store)")
    ap.add_argument("--crop", type=int, default=128, help="view size for --views")
    ap.add_argument("--view-seed", type=int, default=0)
    ap.add_argument("--key", help="this run's name in the results file (default: the name of "
                                   "--root's folder)")
    add_out_argument(ap, "prior_probe")
    args = ap.parse_args(argv)

    from model.utils import seed_everything
    from pipeline.datasets import open_dataset

    ds = open_dataset("folder", args.root)
    tr_store, va_store = ShardedStore.open(args.train_store), ShardedStore.open(args.val_store)
    tr_ids = ds.ids("train")[:: max(1, len(ds.ids("train")) // args.train_images)][: args.train_images]
    va_ids = ds.ids("val")
    if args.val_images:
        va_ids = va_ids[:: max(1, len(va_ids) // args.val_images)][: args.val_images]
    encoders = {}
    seed_everything(args.random_seed)
    encoders[f"{args.backbone} random init (seed {args.random_seed})"] = build_backbone(
        args.backbone, weights="none", dilated=False)
    if args.bn_images:
        seed_everything(args.random_seed)
        bb = build_backbone(args.backbone, weights="none", dilated=False)
        recalibrate_bn(bb, ds, tr_ids[: args.bn_images], scale=args.scale)
        encoders[f"{args.backbone} random init (seed {args.random_seed}), BN re-estimated on "
                 f"{min(args.bn_images, len(tr_ids))} train images"] = bb
    for extra in [int(x) for x in args.extra_seeds.split(",") if x.strip()]:
        seed_everything(extra)
        encoders[f"{args.backbone} random init (seed {extra})"] = build_backbone(
            args.backbone, weights="none", dilated=False)
    for p in args.prior:
        blob = read_prior_export(p)
        encoders[f"{blob['backbone_name']} prior ({Path(p).parent.name}, step {blob.get('step')})"] = \
            build_backbone(blob["backbone_name"], weights=p, dilated=False)
    if args.imagenet_lite0:
        encoders["efficientnet_lite0 ImageNet (reference)"] = build_backbone(
            "efficientnet_lite0", weights="imagenet", dilated=False)
    views = None
    if args.views:
        view_store = ShardedStore.open(args.view_store) if args.view_store else va_store
        views = make_views(ds, view_store, va_ids, crop=args.crop, per_image=16,
                           seed=args.view_seed)
    rows = []
    for name, bb in encoders.items():
        t = time.time()
        bb.eval()
        kw = dict(scale=args.scale, ignore=args.ignore, n_classes=args.classes)
        xtr, ytr = patch_features(bb, ds, tr_store, tr_ids, Path(args.masks), "train", **kw)
        xva, yva = patch_features(bb, ds, va_store, va_ids, Path(args.masks), "val", **kw)
        row = {"encoder": name, "train_patches": len(ytr), "val_patches": len(yva),
               "linear": linear_probe(xtr, ytr, xva, yva, args.classes),
               "nn1": nn_retrieval(xtr, ytr, xva, yva, args.classes)}
        if views is not None:
            row["views"] = view_retrieval(bb, views)
        row["seconds"] = round(time.time() - t, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    majority = float((yva == torch.bincount(ytr).argmax()).float().mean())
    head = ["encoder", "linear acc", "linear mean-class acc", "1-NN acc", "1-NN mean-class acc"]
    if views is not None:
        head += ["view retrieval top-1", "same-image top-1"]
    table = markdown_table(head, [
        [r["encoder"], f"{r['linear']['acc']:.3f}", f"{r['linear']['mean_class_acc']:.3f}",
         f"{r['nn1']['acc']:.3f}", f"{r['nn1']['mean_class_acc']:.3f}"]
        + ([f"{r['views']['top1']:.3f}", f"{r['views']['same_image_top1']:.3f}"]
           if views is not None else []) for r in rows])
    lines = [table, f"\nval patches {rows[0]['val_patches']}, train patches "
             f"{rows[0]['train_patches']} ({len(tr_ids)} train, {len(va_ids)} val images); "
             f"majority-class baseline {majority:.3f}"]
    if views is not None:
        lines.append(f"view retrieval: {rows[0]['views']['patches']} patches in two {args.crop}px "
                     f"MoCo-v2 views of each val image; chance {rows[0]['views']['chance']:.4f}")
    print("\n".join(lines))
    write_result(args.out, {"rows": rows, "majority_baseline": majority,
                            "args": {k: str(v) for k, v in vars(args).items()}},
                 key=args.key or Path(args.root).name, table="\n".join(lines))


if __name__ == "__main__":
    main()
