"""Few-shot loader throughput per core: training batches and test episodes at crop 473.

    python -m bench.fss_loader [--dataset demo] [--cache-dir cache] [--crop 473] [--shot 1]
                               [--items 60] [--out bench/results/fss_loader.json]

One process, one thread (torch and numpy's pools pinned to 1), the exact
``model.fss.data`` items a DataLoader worker builds: ``TrainEpisodes[i]`` (JPEG decode,
mask read from the Zarr store, PFENet's train transform: scale, rotate, blur, flip, crop,
normalise, for the query and each support) and ``TestEpisodes[e]`` (decode, mask, PFENet's
test resize and pad, the original-size label). Images/s counts every image decoded
(1 query + K supports per item). Needs the dataset's masks and fold-0 episodes
(``make bench`` prepares the demo dataset's; any other prepared dataset works with
``--dataset/--cache-dir``). The DataLoader workers a GPU needs = the GPU's episodes/s divided
by the per-core episodes/s printed here. One record per dataset and crop in the results file.
"""
from __future__ import annotations

from bench.common import pin_threads

pin_threads(1)

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from bench.common import ROOT, add_out_argument, machine, markdown_table, write_result  # noqa: E402


def rate(ds, n: int, images_per_item: int) -> dict:
    ds[0]  # warm-up: store and reader opened
    n = min(n, len(ds))
    cpu, wall = time.thread_time(), time.perf_counter()
    for i in range(n):
        ds[i]
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall  # one clock each, one loop
    return {"items": n, "cpu_ms_per_item": round(1e3 * cpu / n, 1),
            "items_per_s_per_core": round(n / cpu, 1),
            "images_per_s_per_core": round(n * images_per_item / cpu, 1),
            "wall_items_per_s": round(n / wall, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--cache-dir", default=os.environ.get("QGNET_CACHE_DIR", str(ROOT / "cache")))
    ap.add_argument("--root")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--crop", type=int, default=473)
    ap.add_argument("--items", type=int, default=60)
    add_out_argument(ap, "fss_loader")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from model.fss.data import TestEpisodes, TrainEpisodes
    from pipeline.episode_stage import load_test_episodes, load_training_list

    tl = load_training_list(args.dataset, args.fold, cache_dir=args.cache_dir)
    train = TrainEpisodes(tl, shot=args.shot, crop=args.crop, scale=(0.9, 1.1),
                          dataset=args.dataset, root=args.root, cache_dir=args.cache_dir)
    eps = load_test_episodes(args.dataset, args.fold, args.shot, cache_dir=args.cache_dir)
    test = TestEpisodes(eps, crop=args.crop, dataset=args.dataset, root=args.root,
                        cache_dir=args.cache_dir)
    h, w = train.reader.load_image(train.store.ids[0]).shape[:2]
    rows = {"train batches (TrainEpisodes)": rate(train, args.items, 1 + args.shot),
            "test episodes (TestEpisodes)": rate(test, args.items, 1 + args.shot)}
    result = {"dataset": args.dataset, "image_size": f"{w}x{h}", "crop": args.crop,
              "shot": args.shot, "rows": rows}
    table = markdown_table(["items", "CPU ms/item", "items/s per core", "images/s per core",
                            "wall items/s"],
                           [[name, r["cpu_ms_per_item"], r["items_per_s_per_core"],
                             r["images_per_s_per_core"], r["wall_items_per_s"]]
                            for name, r in rows.items()])
    print(f"{args.dataset} ({w}x{h} images), crop {args.crop}, {args.shot}-shot, one thread, "
          f"{machine()}")
    print(table)
    write_result(args.out, result, key=f"{args.dataset}, crop {args.crop}, {args.shot}-shot",
                 table=table)
    return result


if __name__ == "__main__":
    main()
