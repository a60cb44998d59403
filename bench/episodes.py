"""Time the episode builder on a synthetic class_pixels table the size of COCO 2014.

    python -m bench.episodes [--episodes 20000] [--seeds 1] [--repeat 3]
                             [--out bench/results/episodes.json]

Train 82,783 x 81 and val 40,504 x 81 rows, about 3 classes per image (Bernoulli per class
with Zipf-like rates; person in about half the images, as in COCO), sizes log-uniform in
100..200,000 pixels. Times the pure functions plus the ``.npz`` write of each file (the
mask-store read is not included). Prints seconds per fold and shot and the projected total
for ``qgnet-prep episodes --dataset coco`` (4 folds x training list + shots 1, 5 x seeds).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_out_argument, best_of, markdown_table, write_result
from pipeline import episode_stage
from pipeline import episodes as ep


def synthetic_table(n: int, c: int = 80, *, per_image: float = 3.0, seed: int = 0) -> np.ndarray:
    """(n, c+1) int64 class_pixels with about ``per_image`` classes per image."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, c + 1) ** 0.8
    rate = np.minimum(per_image * w / w.sum(), 0.5)  # class 1 (person) ~ 0.5
    rng.shuffle(rate[1:])
    present = rng.random((n, c)) < rate
    px = np.exp(rng.uniform(np.log(100), np.log(200_000), size=(n, c))).astype(np.int64)
    cp = np.zeros((n, c + 1), dtype=np.int64)
    cp[:, 1:] = np.where(present, px, 0)
    cp[:, 0] = np.maximum(300_000 - cp[:, 1:].sum(1), 0)
    return cp


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per fold and shot")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    add_out_argument(ap, "episodes")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train, val = synthetic_table(82_783, seed=1), synthetic_table(40_504, seed=2)
    print(f"synthetic tables: train {train.shape}, val {val.shape}, "
          f"{(train[:, 1:] > 0).sum(1).mean():.2f} classes/image, "
          f"{(train[:, 1:] >= 2048).sum(1).mean():.2f} usable; built in "
          f"{time.perf_counter() - t0:.1f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for fold in range(4):
            test, tr = ep.fold_classes("coco", 80, fold)

            def train_list(fold=fold, tr=tr, test=test):
                tl = ep.training_list(train, tr, test_classes=test)
                episode_stage._save_npz_atomic(out / f"train-fold{fold}.npz", tl)
                return tl
            t_train, tl = best_of(train_list, args.repeat)
            rows.append((fold, "train list", t_train, f"{len(tl['image_index'])} images, "
                                                      f"{len(tl['classes'])} pairs"))
            for shot in (1, 5):
                def episodes(fold=fold, shot=shot, test=test):
                    e = ep.sample_episodes(val, test, shot=shot, n_episodes=args.episodes,
                                           seed=321, dataset_name="coco")
                    episode_stage._save_npz_atomic(out / f"test-fold{fold}-shot{shot}.npz", e)
                    return e
                t_ep, e = best_of(episodes, args.repeat)
                rows.append((fold, f"{shot}-shot x {args.episodes}", t_ep,
                             f"{len(np.unique(e['query']))} distinct queries"))
    table = markdown_table(["fold", "what", "seconds", "result"],
                           [[fold, what, f"{t:.3f}", res] for fold, what, t, res in rows],
                           align="rlrl")
    print("\n" + table)
    t_lists = sum(t for _, w, t, _ in rows if w == "train list")
    t_eps = sum(t for _, w, t, _ in rows if w != "train list")
    total = t_lists + args.seeds * t_eps
    print(f"\nprojected `qgnet-prep episodes --dataset coco` (4 folds, shots 1+5, "
          f"{args.seeds} seed(s)): {total:.2f} s "
          f"(lists {t_lists:.2f} s + episodes {args.seeds * t_eps:.2f} s), "
          f"excluding the mask-store read")
    write_result(args.out, {"rows": [dict(zip(("fold", "what", "seconds", "result"), r,
                                              strict=True)) for r in rows],
                            "projected_coco_s": round(total, 3)},
                 key=f"COCO 2014 size, {args.episodes} episodes, {args.seeds} seed(s)", table=table)


if __name__ == "__main__":
    main()
