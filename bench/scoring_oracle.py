"""Oracle scores of the test-time path of whichever code tree is on PYTHONPATH.

A prediction made from the label itself goes through that tree's ``test_transform`` and
scoring; a correct path scores ~1. This tree: ``python -m bench.scoring_oracle WHAT``. Another
tree (a before / after table, docs/fss.md "Test-time resize and scoring"): run this file by
its path with that tree on ``PYTHONPATH``, so that ``model`` comes from there::

    git archive 82a5b61 | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python bench/scoring_oracle.py synthetic      # before
    python -m bench.scoring_oracle synthetic                           # after
    python -m bench.scoring_oracle camvid --cache-dir C --episodes 100 \
        --out bench/results/scoring_oracle.json

``synthetic``: an off-centre ellipse at 9 sizes x crops 473 and 97 (the rows of the docs
table). ``scorings`` (this tree only, issue 18 §1 / 19 §4): the same ellipse scored under
every scoring of ``qgnet-eval fss --scoring`` (exact, pfenet, hsnet, hsnet-original), with
PFENet's own value computed by its test.py arithmetic beside ours::

    python -m bench.scoring_oracle scorings --out bench/results/scoring_oracle.json
    python -m bench.scoring_oracle cost     # CPU ms per episode, both vs exact

``camvid``: the query labels of the first N fold-0 test episodes (seed 321) of a
``camvid`` cache built by bench/camvid_fss.py; prints mIoU / FB-IoU (%) of the oracles,
summed over episodes as the evaluator does. Oracles: *soft* (the label's signed distance
through the image path, fg logit = distance) and *hard* (the canvas label, one-hot).
Nothing from ``bench`` is imported at the top (the other tree may have no ``bench.common``):
the result writer is imported only for ``--out``. One record per WHAT in the results file.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

SIZES = [(97, 131), (131, 97), (300, 400), (400, 300), (473, 473), (375, 500), (500, 375),
         (480, 854), (854, 480)]


def ellipse(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    lab = ((((yy - h * 0.55) / (h * 0.3)) ** 2 + ((xx - w * 0.45) / (w * 0.28)) ** 2) <= 1)
    lab = lab.astype(np.uint8)
    lab[:2] = 255
    return lab


def signed_distance(lab):
    fg = lab == 1
    return (ndimage.distance_transform_edt(fg) - ndimage.distance_transform_edt(~fg)).astype(np.float32)


def oracle_logits(lab, crop):
    """(hard, soft) 1 x 2 x S x S logits of the label through this tree's test_transform."""
    from model.fss import transforms as T

    h, w = lab.shape
    _, y = T.test_transform(np.zeros((h, w, 3), np.uint8), lab, size=crop)
    fg = torch.from_numpy((y == 1).astype(np.float32))
    x, _ = T.test_transform(np.repeat(signed_distance(lab)[..., None], 3, axis=2), lab, size=crop)
    d = torch.from_numpy(x[0] * T.STD[0] + T.MEAN[0])
    return torch.stack([1 - fg, fg])[None], torch.stack([torch.zeros_like(d), d])[None]


def confusion(logits, lab):
    """This tree's scoring of one episode -> 2 x 2 counts."""
    import model.fss.metrics as M

    h, w = lab.shape
    t = torch.from_numpy(lab.astype(np.int64))
    if hasattr(M, "episode_confusions"):  # the fixed tree: the evaluator's own function
        return M.episode_confusions(logits, t[None], [(h, w)]).numpy()[0]
    pred = M.upsample_logits(logits, (h, w), padded_square=True)  # the old evaluator's call
    return M.episode_confusion(pred, t)


def fg_iou(c):
    return float(c[1, 1] / max(c[1, 1] + c[0, 1] + c[1, 0], 1))


def synthetic():
    rows = []
    for crop in (473, 97):
        for h, w in SIZES:
            lab = ellipse(h, w)
            hard, soft = oracle_logits(lab, crop)
            rows.append({"crop": crop, "size": [h, w], "hard": fg_iou(confusion(hard, lab)),
                         "soft": fg_iou(confusion(soft, lab))})
            print(f"| {crop} | {h} x {w} | soft {rows[-1]['soft']:.4f} | hard {rows[-1]['hard']:.4f} |",
                  flush=True)
    return rows


def pfenet_value(logits, lab):
    """PFENet test.py (ori_resize) + intersectionAndUnionGPU, written out: the label padded
    to L x L with 255, the S x S output resized to L x L (align_corners=True), argmax, the
    foreground intersection over union."""
    import torch.nn.functional as F

    h, w = lab.shape
    L = max(h, w)
    target = np.full((L, L), 255, np.int64)
    target[:h, :w] = lab
    out = F.interpolate(logits.float(), size=(L, L), mode="bilinear", align_corners=True)
    out = out.max(1)[1][0].numpy()
    out[target == 255] = 255
    inter = ((out == 1) & (target == 1)).sum()
    return float(inter / ((out == 1).sum() + (target == 1).sum() - inter))


def scorings(sizes=SIZES, crops=(473, 97)):
    """Foreground IoU of the hard and soft oracles under every scoring, per size and crop."""
    from model.fss import transforms as T
    from model.fss.metrics import episode_confusions

    def score(logits, lab, protocol, crop=None):
        h, w = lab.shape
        t = torch.from_numpy(lab.astype(np.int64))[None]
        return fg_iou(episode_confusions(logits, t, [(h, w)], crop=crop, protocol=protocol).numpy()[0])

    rows = []
    print("| crop | H x W | oracle | exact | pfenet | PFENet's own | hsnet (400 square) | hsnet-original |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for crop in crops:
        for h, w in sizes:
            lab = ellipse(h, w)
            hard, soft = oracle_logits(lab, crop)
            # HSNet's pass: the square label (hard) / the label's distance as grey levels (soft)
            ramp = max(h, w) / T.HSNET_SIZE * 16.0
            grey = np.clip(127.5 + 127.5 * signed_distance(lab) / ramp, 0, 255).astype(np.uint8)
            x, sq = T.hsnet_transform(np.repeat(grey[..., None], 3, axis=2), lab)
            fg = torch.from_numpy((sq == 1).astype(np.float32))
            level = torch.from_numpy(x[0] * T.STD[0] + T.MEAN[0]) - 127.5
            hs = {"hard": torch.stack([1 - fg, fg])[None],
                  "soft": torch.stack([torch.zeros_like(level), level])[None]}
            for kind, logits in (("hard", hard), ("soft", soft)):
                row = {"crop": crop, "size": [h, w], "oracle": kind,
                       "exact": score(logits, lab, "exact", crop), "pfenet": score(logits, lab, "pfenet", crop),
                       "pfenet_reference": pfenet_value(logits, lab),
                       "hsnet": score(hs[kind], sq, "hsnet"), "hsnet_original": score(hs[kind], lab, "hsnet")}
                rows.append(row)
                print(f"| {crop} | {h} x {w} | {kind} | {row['exact']:.4f} | {row['pfenet']:.4f} | "
                      f"{row['pfenet_reference']:.4f} | {row['hsnet']:.4f} | {row['hsnet_original']:.4f} |",
                      flush=True)
    return rows


def cost(repeats=20):
    """CPU seconds per episode of the evaluator's scoring: "exact" alone (the old pass) vs
    ("pfenet", "exact") in one pass, same logits, same run (time.process_time)."""
    import time

    from model.fss.metrics import episode_confusions

    rows = []
    gen = torch.Generator().manual_seed(0)
    for (h, w), crop in (((375, 500), 473), ((480, 854), 473), ((360, 480), 97)):
        logits = torch.randn(1, 2, crop, crop, generator=gen)
        lab = torch.from_numpy(ellipse(h, w).astype(np.int64))[None]
        out = {}
        for name, protocol in (("exact", "exact"), ("pfenet+exact", ("pfenet", "exact"))):
            episode_confusions(logits, lab, [(h, w)], protocol=protocol)  # warm-up
            t0 = time.process_time()
            for _ in range(repeats):
                episode_confusions(logits, lab, [(h, w)], protocol=protocol)
            out[name] = (time.process_time() - t0) / repeats
        rows.append({"size": [h, w], "crop": crop, **{k: round(v * 1000, 2) for k, v in out.items()},
                     "ratio": round(out["pfenet+exact"] / out["exact"], 2)})
        print(f"| {h} x {w} | {crop} | {rows[-1]['exact']} ms | {rows[-1]['pfenet+exact']} ms | "
              f"{rows[-1]['ratio']} |", flush=True)
    return rows


def camvid(cache_dir, n):
    from pipeline.episode_stage import load_test_episodes
    from pipeline.mask_stage import locate_mask_store

    eps = load_test_episodes("camvid", 0, 1, cache_dir=cache_dir)
    store = locate_mask_store("camvid", "val", cache_dir=cache_dir)
    out = {}
    for kind in ("hard", "soft"):
        per_class, total = {}, np.zeros((2, 2), np.int64)
        for q, c in zip(eps["query"][:n], eps["cls"][:n], strict=True):
            m = store.get(int(q))
            lab = np.where(m == 255, 255, (m == c).astype(np.uint8)).astype(np.uint8)
            logits = oracle_logits(lab, 97)[0 if kind == "hard" else 1]
            conf = confusion(logits, lab)
            per_class[int(c)] = per_class.get(int(c), 0) + conf
            total += conf
        miou = np.mean([fg_iou(v) for v in per_class.values()])
        bg = total[0, 0] / (total[0, 0] + total[0, 1] + total[1, 0])
        out[kind] = {"miou": 100 * miou, "fb_iou": 100 * (fg_iou(total) + bg) / 2,
                     "per_class": {k: 100 * fg_iou(v) for k, v in per_class.items()}}
        print(f"camvid fold 0, {n} episodes, crop 97, {kind} oracle: mIoU {out[kind]['miou']:.2f} "
              f"FB-IoU {out[kind]['fb_iou']:.2f} per class "
              + ", ".join(f"{k}: {v:.2f}" for k, v in out[kind]["per_class"].items()), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["synthetic", "scorings", "cost", "camvid"])
    p.add_argument("--cache-dir")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--out", metavar="FILE",
                   help="merge this run's record into FILE (bench/results/scoring_oracle.json "
                        "holds the current figures; default: print only)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = {"synthetic": synthetic, "scorings": scorings, "cost": cost}.get(
        a.what, lambda: camvid(a.cache_dir, a.episodes))()
    if a.out:
        from bench.common import write_result

        write_result(a.out, res, key=a.what + (f", {a.episodes} episodes" if a.what == "camvid"
                                               else ""))


if __name__ == "__main__":
    main()
