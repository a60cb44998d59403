"""qgnet-train fss / qgnet-eval fss|regions|show on a tiny folder dataset; errors that say
which command builds what is missing."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.eval_fss import fss as eval_fss
from cli.eval_regions import regions
from cli.eval_show import show
from cli.train_fss import fss as train_fss


def write_toy_folder(root, *, n=(32, 16), size=80):
    """8 coloured classes, one usable (48 x 48) object and one small object per image."""
    colours = np.random.default_rng(1).integers(0, 255, (8, 3))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(1, 9)) + "\n")
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), n, strict=True):
        names = [f"{split}{i:03d}" for i in range(count)]
        for i, name in enumerate(names):
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(22, size - 48, 2)
            mask[y:y + 48, x:x + 48] = i % 8 + 1
            mask[2:22, 2:22] = (i + 3) % 8 + 1
            img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
            for c in np.unique(mask)[1:]:
                img[mask == c] = colours[c - 1]
            mask[:, :2] = 255
            Image.fromarray(img).save(root / "images" / f"{name}.png")
            Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from pipeline.episodes import build_episodes
    from pipeline.mask_stage import build_mask_store

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("fsscli")
    root, cache = write_toy_folder(base / "data"), str(base / "cache")
    for split in ("train", "val"):
        build_mask_store("folder", split=split, cache_dir=cache, root=root, workers=1,
                         scheduler="sync", progress=False)
    build_episodes("folder", cache_dir=cache, folds=[0], shots=[1], n_episodes=4,
                   echo=lambda s: None)
    return {"root": str(root), "cache": cache, "base": base}


def test_missing_caches_name_the_prep_commands(tmp_path):
    r = CliRunner().invoke(train_fss, ["--dataset", "folder", "--cache-dir", str(tmp_path),
                                       "--no-prior-map", "--device", "cpu"])
    assert r.exit_code == 1 and "qgnet-prep episodes" in r.output, r.output


def test_missing_prior_says_what_to_run(tmp_path):
    r = CliRunner().invoke(train_fss, ["--dataset", "folder", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 1 and "qgnet-train prior" in r.output and "--no-prior-map" in r.output
    r = CliRunner().invoke(train_fss, ["--dataset", "folder", "--prior", str(tmp_path / "nope.pt")])
    assert r.exit_code == 1 and "qgnet-train prior" in r.output


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(tmp_path / "best.pt")])
    assert r.exit_code == 1 and "no checkpoint" in r.output


def test_train_then_eval_show_regions(toy):
    run = toy["base"] / "run"
    r = CliRunner().invoke(train_fss, [
        "--dataset", "folder", "--cache-dir", toy["cache"], "--fold", "0", "--prior", "imagenet",
        "--crop", "33", "--batch-size", "2", "--epochs", "1", "--max-steps", "2",
        "--workers", "0", "--threads", "1", "--device", "cpu", "--val-episodes", "2",
        "--no-progress", "--out", str(run)])
    assert r.exit_code == 0, r.output
    for name in ("config.json", "metrics.jsonl", "train.log", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["lr_scale"] == 10.0

    # the checkpoint alone rebuilds the model (no dataset / backbone options)
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(run / "best.pt"), "--workers", "0",
                                      "--seeds", "321", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and "FB-IoU" in r.output
    res = json.loads((run / "results.json").read_text())
    (entry,) = res.values()
    assert entry["shot"] == 1 and entry["episodes"] == [4]
    assert set(entry["per_class"]) == {"1", "5"} and entry["episodes_per_s"] > 0
    assert "| 1 c1 |" in (run / "results.md").read_text()

    r = CliRunner().invoke(regions, ["--checkpoint", str(run / "best.pt"), "--workers", "0",
                                     "--episodes", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    reg = json.loads((run / "regions.json").read_text())
    assert len(reg["guided"]["recall"]) == 9 and reg["prior"] is not None

    out = toy["base"] / "show"
    r = CliRunner().invoke(show, ["--checkpoint", str(run / "best.pt"), "--episodes", "0,3",
                                  "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["episode-00000.png", "episode-00003.png"]
    im = Image.open(pngs[0])
    assert im.height == 218 and im.width > 6 * 200  # 6 tiles: query, support, 2 maps, pred, truth
