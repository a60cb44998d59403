"""Few-shot evaluation throughput (episodes/s) and peak memory.

Runs :func:`model.fss.evaluate.evaluate` on fixed test episodes (data loading, test
resize, model, scoring at the original resolution: everything ``qgnet-eval fss`` does)
and prints one JSON line; ``--out`` also writes it. Either a trained checkpoint or an
untrained network built from ``--backbone/--weights/--prior`` (speed does not depend on
the weights)::

    python -m bench.fss_eval --checkpoint runs/fss/.../best.pt --episodes 200
    python -m bench.fss_eval --dataset folder --cache-dir /tmp/camvid_cache --crop 129 \
        --backbone efficientnet_lite0 --weights imagenet --prior imagenet --episodes 100 \
        --out bench/results/fss_eval.json

Peak memory: ``torch.cuda.max_memory_allocated`` on GPU, the process's max RSS on CPU.
The first batch is excluded from the timing (warm-up). The JSON line is what
``bench.eval_speed`` reads (from this tree and from a baseline revision's).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

from bench.common import add_out_argument, write_result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint")
    p.add_argument("--dataset", default="folder")
    p.add_argument("--cache-dir")
    p.add_argument("--root")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--crop", type=int, default=129)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--prior", default="imagenet", help="PATH, imagenet, or none (baseline)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    add_out_argument(p, "fss_eval")
    a = p.parse_args(argv)

    import torch

    from model.fss import build
    from model.fss import evaluate as ev

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.checkpoint:
        model = a.checkpoint
    else:
        use_prior = a.prior != "none"
        model = build.build_model(build.model_meta({"backbone": a.backbone, "weights": a.weights,
                                                    "use_prior_map": use_prior, "prior": a.prior,
                                                    "crop": a.crop}))
    res = ev.evaluate(model, dataset=a.dataset if not a.checkpoint else None, fold=a.fold,
                      shot=a.shot, n_episodes=a.episodes, root=a.root, cache_dir=a.cache_dir,
                      crop=a.crop if not a.checkpoint else None, device=a.device,
                      batch_size=a.batch_size, workers=a.workers, progress=False, write=False)
    out = {"bench": "fss_eval", "episodes": res["episodes"][0], "batch_size": a.batch_size,
           "crop": res["crop"], "shot": res["shot"], "use_prior_map": res["use_prior_map"],
           "episodes_per_s": round(res["episodes_per_s"], 3),
           "peak_memory_mb": res["peak_memory_mb"], "peak_memory_kind": res["peak_memory_kind"],
           "device": res["device"], "threads": torch.get_num_threads(),
           "miou": res["miou"]["mean"], "wall_s": round(time.perf_counter() - t0, 1),
           "machine": platform.processor() or platform.machine()}
    if res["device"].startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out))
    write_result(a.out, out, key=f"{a.checkpoint or a.dataset}, crop {out['crop']}, batch "
                 f"{a.batch_size}, {'QGNet' if out['use_prior_map'] else 'baseline'}, {out['device']}")
    return out


if __name__ == "__main__":
    main()
