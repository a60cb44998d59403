"""The walk of the config from ``qgnet-train fss`` to the first training step (issue 21).

Runs ``qgnet-train fss`` on a tiny generated folder dataset under ``sys.setprofile`` and
records, for every Python call until the first call of the training step
(``model.fss.build.step``), the module of each frame that holds the config in its arguments:
an ``FssConfig`` instance, or its plain-dict form (``config_dict(cfg)``: a mapping with at
least five of the config's field names). The methods dataclasses generates (``__init__``,
``__eq__``: code compiled from a string) are left out. Consecutive calls in one module are one *stay*;
the report gives the sequence of stays, the number of stays, the distinct modules, and how
often the walk drops from ``cli``/``model`` into ``pipeline`` and climbs back.

    python -m bench.cfg_walk                          # this tree
    python -m bench.cfg_walk --tree /work/baseline --tree . --out bench/results/cfg_walk.json

``--tree`` runs the measurement in a child process whose imports come from that checkout
(PYTHONPATH), so one script measures both. The child runs this file by its path, not as
``bench.cfg_walk``: the other checkout's ``bench`` may differ or be absent, so :func:`walk`
imports nothing from ``bench``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

PROJECT = ("cli", "model", "pipeline")
STEP = ("model.fss.build", "step")


def write_toy(root: Path, *, n_train: int = 32, n_val: int = 16, size: int = 80) -> None:
    """A folder dataset: 8 classes, one 48 x 48 object per image (usable for episodes)."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(1, 9)) + "\n")
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        names = []
        for i in range(n):
            img = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            mask[16:64, 16:64] = i % 8 + 1
            names.append(f"{split}{i:03d}")
            Image.fromarray(img).save(root / "images" / f"{names[-1]}.png")
            Image.fromarray(mask).save(root / "masks" / f"{names[-1]}.png")
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")


class Reached(Exception):
    """Raised at the first training step: the walk is complete."""


def walk(work: Path) -> dict:
    """Prepare the toy caches, then trace ``qgnet-train fss`` up to its first step."""
    from pipeline.episode_stage import build_episodes
    from pipeline.mask_stage import build_mask_store

    root, cache = work / "data", work / "cache"
    write_toy(root)
    for split in ("train", "val"):
        build_mask_store("folder", split=split, cache_dir=cache, root=root, workers=1,
                         scheduler="sync", progress=False)
    build_episodes("folder", cache_dir=cache, folds=[0], shots=[1], n_episodes=4,
                   echo=lambda s: None)
    from cli.train import main

    try:  # where FssConfig lives: model/fss/config.py, before issue 21 the trainer
        from model.fss.config import FssConfig
    except ImportError:
        from model.fss.trainer import FssConfig
    names = set(FssConfig.__dataclass_fields__)
    calls: list[str] = []
    where: list[str] = []  # module.function of each call, for reading the walk

    def holds_config(frame) -> bool:
        for v in frame.f_locals.values():
            if isinstance(v, FssConfig):
                return True
            if (isinstance(v, dict) and len(names & set(map(str, v))) >= 5
                    and not all(isinstance(x, (type, dataclasses.Field)) or typing.get_args(x)
                                for x in v.values())):
                return True  # (a dict of the fields or their types is not a config)
        return False

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if (module, frame.f_code.co_name) == STEP:
            raise Reached
        generated = frame.f_code.co_filename.startswith("<")  # a dataclass's __init__, __eq__
        if module.split(".")[0] in PROJECT and not generated and holds_config(frame):
            calls.append(module)
            where.append(f"{module}.{frame.f_code.co_name}")

    args = ["fss", "--dataset", "folder", "--root", str(root), "--cache-dir", str(cache),
            "--no-prior-map", "--crop", "33", "--batch-size", "2", "--epochs", "1",
            "--workers", "0", "--threads", "1", "--device", "cpu", "--val-episodes", "0",
            "--no-progress", "--out", str(work / "run")]
    sys.setprofile(profile)
    try:
        main(args, standalone_mode=False)
    except Reached:
        pass
    finally:
        sys.setprofile(None)
    stays = [m for i, m in enumerate(calls) if i == 0 or calls[i - 1] != m]
    layer = [m.split(".")[0] for m in stays]
    drops = sum(1 for a, b in zip(layer[:-1], layer[1:], strict=True) if a != "pipeline" and b == "pipeline")
    return {"calls": len(calls), "stays": len(stays), "sequence": stays,
            "modules": sorted(set(stays)), "distinct_modules": len(set(stays)),
            "drops_into_pipeline": drops, "functions": where}


def measure(tree: Path) -> dict:
    """:func:`walk` in a child process importing from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--inner", tmp], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"cfg walk in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", type=Path,
                    help="checkout(s) to measure (default: this one); repeat for several")
    ap.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, metavar="FILE",
                    help="merge this run's record into FILE (bench/results/cfg_walk.json holds "
                         "the current figures; default: print only)")
    a = ap.parse_args()
    if a.inner is not None:
        print(json.dumps(walk(a.inner)))
        return
    from bench.common import ROOT, write_result

    trees = a.tree or [ROOT]
    results = {str(t): measure(t.resolve()) for t in trees}
    for tree, r in results.items():
        print(f"{tree}: {r['stays']} stays in {r['distinct_modules']} modules "
              f"({r['calls']} calls holding the config), {r['drops_into_pipeline']} drops "
              f"into pipeline/")
        print("  " + " > ".join(r["sequence"]))
    write_result(a.out, results, key="qgnet-train fss")


if __name__ == "__main__":
    main()
