"""``qgnet-predict`` throughput: query images per second through :class:`model.predict.Segmenter`.

Times what ``qgnet-predict`` does per query once the supports are prepared: test resize and
pad, the network, scoring back to the query's own size (file decoding and PNG writing
excluded). Speed does not depend on the
weights, so an untrained network of the demo's backbones is used unless ``--model`` names
a bundle or checkpoint. Queries are CamVid photos (../shared/data/camvid, 480 x 360) when
present, else random images of that size. One JSON line per crop::

    python -m bench.predict --crops 473,129 --images 24 --batch-size 4 --threads 2 \
        --out bench/results/predict.json
"""
from __future__ import annotations

import argparse
import json
import time

from bench.common import CAMVID, add_out_argument, write_result


def _images(n: int):
    import numpy as np

    from pipeline.datasets._image import load_rgb

    files = sorted((CAMVID / "val" / "images").glob("*.jpg"))[:n]
    if files:
        return [load_rgb(f) for f in files], "camvid val photos (480x360)"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (360, 480, 3), dtype=np.uint8) for _ in range(n)], "random 480x360"


def _segmenter(model_path: str | None, crop: int, threads: int):
    import torch

    from model.fss.build import build_model
    from model.predict import Segmenter

    if threads:
        torch.set_num_threads(threads)
    if model_path:
        return Segmenter.load(model_path, device="cpu")
    meta = {"backbone": "efficientnet_lite0", "weights": "imagenet", "use_prior_map": True,
            "prior": "imagenet", "prior_backbone": "efficientnet_lite0", "crop": crop}
    return Segmenter(build_model(meta).eval(), meta, device=torch.device("cpu"))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="bundle or best.pt (default: untrained demo backbones)")
    p.add_argument("--crops", default="473,129")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    add_out_argument(p, "predict")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    images, source = _images(a.images + a.batch_size + 1)
    support = images[0]
    mask = np.zeros(support.shape[:2], np.uint8)
    h, w = mask.shape
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    rows = []
    for crop in (int(c) for c in a.crops.split(",")):
        seg = _segmenter(a.model, crop, a.threads)
        s, m = seg.prepare_supports([support], [mask])
        seg.predict_prepared(images[1:1 + a.batch_size], s, m, batch_size=a.batch_size)  # warm-up
        queries = images[1 + a.batch_size:][: a.images] or images[1:]
        t0 = time.perf_counter()
        seg.predict_prepared(queries, s, m, batch_size=a.batch_size)
        secs = time.perf_counter() - t0
        rows.append({"crop": crop, "images": len(queries), "batch_size": a.batch_size,
                     "images_per_s": round(len(queries) / secs, 3),
                     "ms_per_image": round(1000 * secs / len(queries), 1), "source": source,
                     "threads": torch.get_num_threads(), "device": "cpu"})
        print(json.dumps(rows[-1]), flush=True)
    write_result(a.out, rows, key=f"{a.model or 'untrained demo backbones'}, batch "
                 f"{a.batch_size}, {torch.get_num_threads()} threads")
    return rows


if __name__ == "__main__":
    main()
