"""The new datasets from the command line: a COCO-style json per split through every stage
(masks, superpixels, episodes, prior, fss, eval), --year, and the one-line refusals."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.prep import main as prep
from cli.train import main as train

_spec = importlib.util.spec_from_file_location(
    "pipeline_fixtures", Path(__file__).resolve().parents[1] / "pipeline" / "conftest.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def json_flags(export: Path) -> list[str]:
    return ["--train-json", str(export / "train" / "annotations.json"),
            "--train-images", str(export / "train" / "images"),
            "--val-json", str(export / "val" / "annotations.json"),
            "--val-images", str(export / "val" / "images")]


def run(cmd, args):
    r = CliRunner().invoke(cmd, args)
    return r.exit_code, r.output


@pytest.mark.parametrize("extra, match", [
    (["--root", "/somewhere"], "--root and --train-json/--val-json both name the data"),
    (["--dataset", "pascal"], "--dataset pascal is a built-in reader"),
    (["--year", "2015"], "--year must be 2014 or 2017"),
])
def test_json_flags_refusals(tmp_path, extra, match):
    export = fx.make_coco_json(tmp_path / "export")
    args = ["masks", "--dataset", "shop", "--cache-dir", str(tmp_path / "c"), *json_flags(export),
            *extra]
    code, out = run(prep, args)
    assert code != 0 and match in out, out
    assert "Traceback" not in out


def test_images_flag_without_json_and_a_missing_json(tmp_path):
    code, out = run(prep, ["masks", "--dataset", "shop", "--cache-dir", str(tmp_path),
                           "--val-images", str(tmp_path)])
    assert code != 0 and "--val-images needs --val-json" in out
    code, out = run(prep, ["masks", "--dataset", "shop", "--cache-dir", str(tmp_path),
                           "--val-json", str(tmp_path / "nope.json")])
    assert code != 0 and "nope.json does not exist" in out


def test_year_on_another_dataset_is_one_line(tmp_path):
    root = fx.make_folder(tmp_path / "f")
    code, out = run(prep, ["masks", "--dataset", "folder", "--root", str(root), "--year", "2017",
                           "--cache-dir", str(tmp_path / "c")])
    assert code != 0 and "--year applies to --dataset coco only" in out


def test_coco_2017_masks_from_the_command_line(tmp_path):
    root = fx.make_coco(tmp_path / "coco", year=2017)
    code, out = run(prep, ["masks", "--dataset", "coco", "--root", str(root), "--split", "val",
                           "--cache-dir", str(tmp_path / "c"), "--workers", "1", "--no-progress"])
    assert code == 0, out
    from pipeline.store import ShardedStore

    store = ShardedStore.open(tmp_path / "c" / "coco" / "masks" / "val.zarr", kind="masks")
    assert store.ids == ["000000000042", "000000000073"] and store.attrs["year"] == 2017


def test_cross_domain_from_the_command_line(tmp_path):
    root = fx.make_chest(tmp_path / "d")
    cache = str(tmp_path / "c")
    code, out = run(prep, ["masks", "--dataset", "chest", "--root", str(root), "--split", "test",
                           "--cache-dir", cache, "--workers", "1", "--no-progress"])
    assert code == 0, out
    code, out = run(prep, ["episodes", "--dataset", "chest", "--cache-dir", cache, "--shot", "1"])
    assert code == 0, out
    assert "test 1-shot seed 0 (patnet): 600 episodes" in out
    code, out = run(prep, ["episodes", "--dataset", "chest", "--cache-dir", cache,
                           "--protocol", "hsnet"])
    assert code != 0 and "use --protocol patnet" in out and "Traceback" not in out


def test_coco_json_through_every_stage(tmp_path, monkeypatch):
    """masks (train, val) -> superpixels -> episodes -> prior -> fss -> eval, on a COCO-style
    export named by --train-json / --val-json once; later commands need only --dataset."""
    import torch

    from cli.eval_fss import fss as eval_fss
    from model.backbones import BACKBONES

    torch.set_num_threads(1)
    helpers_spec = importlib.util.spec_from_file_location(
        "prior_trainer_tests",
        Path(__file__).resolve().parents[1] / "model" / "prior" / "test_trainer.py")
    helpers = importlib.util.module_from_spec(helpers_spec)
    helpers_spec.loader.exec_module(helpers)
    monkeypatch.setitem(BACKBONES, "tiny", helpers.TinyBackbone)

    export = fx.make_coco_json(tmp_path / "export", n=8)
    cache = str(tmp_path / "cache")
    common = ["--dataset", "shop", "--cache-dir", cache, "--workers", "1", "--no-progress"]
    code, out = run(prep, ["masks", *common, "--split", "train", *json_flags(export)])
    assert code == 0, out
    spec = (tmp_path / "cache" / "shop" / "data" / "dataset.toml").read_text()
    assert str((export / "val" / "annotations.json").resolve()) in spec
    code, out = run(prep, ["masks", *common, "--split", "val"])  # the name is enough now
    assert code == 0, out
    code, out = run(prep, ["superpixels", *common, "--split", "train", "--n-segments", "20"])
    assert code == 0, out
    folds = tmp_path / "folds.txt"
    folds.write_text("mug\nspoon\nkettle\n")  # 3 classes: 3 folds of one class
    code, out = run(prep, ["episodes", "--dataset", "shop", "--cache-dir", cache, "--fold", "0",
                           "--shot", "1", "--min-pixels", "100", "--episodes", "4",
                           "--folds-file", str(folds)])
    assert code == 0, out
    assert "fold 0: test mug" in out

    prior_out = tmp_path / "prior"
    code, out = run(train, ["prior", "--dataset", "shop", "--cache-dir", cache,
                            "--backbone", "tiny", "--init", "none", "--crop", "32",
                            "--batch-size", "4", "--queue-size", "8", "--local-queue-size", "16",
                            "--dim", "8", "--mlp-hidden", "16", "--patches-per-image", "2",
                            "--split-bn-groups", "2", "--workers", "0", "--device", "cpu",
                            "--no-progress", "--max-steps", "1", "--out", str(prior_out)])
    assert code == 0, out
    assert (prior_out / "prior_extractor.pt").is_file()

    fss_run = tmp_path / "fss"
    code, out = run(train, ["fss", "--dataset", "shop", "--cache-dir", cache, "--fold", "0",
                            "--prior", "imagenet", "--crop", "33", "--batch-size", "2",
                            "--epochs", "1", "--max-steps", "1", "--workers", "0",
                            "--threads", "1", "--device", "cpu", "--val-episodes", "2",
                            "--no-progress", "--out", str(fss_run)])
    assert code == 0, out
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(fss_run / "best.pt"), "--workers", "0",
                                      "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (entry,) = json.loads((fss_run / "results.json").read_text()).values()
    assert entry["dataset"] == "shop" and entry["episodes"] == [4]
    assert set(entry["per_class"]) == {"1"} and entry["per_class"]["1"]["name"] == "mug"

    # the same checkpoint on a cross-domain set, no fine-tuning: its fold 0, protocol, seed,
    # test split and root (the mask store's, not the checkpoint's)
    chest = fx.make_chest(tmp_path / "chest")
    code, out = run(prep, ["masks", "--dataset", "chest", "--root", str(chest), "--split", "test",
                           "--cache-dir", cache, "--workers", "1", "--no-progress"])
    assert code == 0, out
    code, out = run(prep, ["episodes", "--dataset", "chest", "--cache-dir", cache, "--shot", "1",
                           "--episodes", "3"])
    assert code == 0, out
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(fss_run / "best.pt"), "--workers", "0",
                                      "--no-progress", "--device", "cpu", "--dataset", "chest",
                                      "--protocol", "patnet", "--shot", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((fss_run / "results.json").read_text())
    assert len(res) == 2  # the checkpoint's own result is kept
    (cross,) = [v for k, v in res.items() if k.endswith("-chest")]
    assert (cross["dataset"], cross["fold"], cross["seeds"], cross["episodes"]) == (
        "chest", 0, [0], [3])
    assert cross["per_class"]["1"]["name"] == "lung"


def test_object_mask_store_binarises_with_the_image_class(tmp_path):
    """The few-shot loader on a one-class-per-image store: the object is the episode's class
    when the image's class is (and only then)."""
    from model.fss.data import TestEpisodes
    from pipeline.episode_stage import build_episodes, load_test_episodes
    from pipeline.mask_stage import build_mask_store

    root = fx.make_deepglobe(tmp_path / "d")
    cache = str(tmp_path / "c")
    build_mask_store("deepglobe", root=root, split="test", cache_dir=cache, workers=1,
                     scheduler="sync", progress=False)
    build_episodes("deepglobe", cache_dir=cache, shots=[1], seeds=[0], n_episodes=12,
                   echo=lambda s: None)
    ep = load_test_episodes("deepglobe", 0, 1, seed=0, protocol="patnet", cache_dir=cache)
    ds = TestEpisodes(ep, crop=17, dataset="deepglobe", cache_dir=cache)
    assert ds.split == "test"
    item = ds[0]
    q = int(ep["query"][0])
    obj = ds.store.get(q)
    assert np.array_equal(item["orig_label"].numpy(), obj.astype(np.int64))
    assert item["orig_label"].max() == 1
    sm = item["support_masks"]  # padded with 255 to the crop
    assert (sm == 1).any() and set(sm.unique().tolist()) <= {0, 1, 255}
    # the same image read for another class than its own has no object
    image, label = ds.load(q, int(ep["cls"][0]) % 6 + 1)
    assert label.max() == 0 and image.shape[:2] == label.shape
    Image.fromarray(image).save(tmp_path / "q.png")  # a real RGB image came back
