"""``qgnet-prep episodes`` on tiny mask stores built in the test."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from cli.prep import main
from pipeline.cache import episodes_dir, mask_store_path
from pipeline.store import ShardedStore

NAMES = ["cat", "dog", "cow", "bird", "boat", "car", "bus", "tree"]


def make_store(cache, split, cp, dataset="toy"):
    n = len(cp)
    store = ShardedStore.create(
        mask_store_path(dataset, split, cache_dir=cache), ids=[f"{split}{i}" for i in range(n)],
        hw=np.full((n, 2), 4), maps="masks", dtype="uint8",
        extras={"class_pixels": ((len(NAMES) + 1,), "int64")},
        attrs={"kind": "masks", "dataset": dataset, "split": split, "class_names": NAMES,
               "num_classes": len(NAMES), "root": str(cache)})
    store.write_shard(0, [np.zeros((4, 4), np.uint8)] * n, extras={"class_pixels": cp})


def tiny_stores(cache):
    """Image i holds classes (i mod 8) + 1 and ((i + 3) mod 8) + 1 with 3000 px each."""
    def table(n):
        cp = np.zeros((n, 9), dtype=np.int64)
        for i in range(n):
            cp[i, i % 8 + 1] = cp[i, (i + 3) % 8 + 1] = 3000
        return cp
    make_store(cache, "train", table(64))
    make_store(cache, "val", table(48))


def test_episodes_command_writes_files_and_prints_counts(tmp_path):
    tiny_stores(tmp_path)
    result = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir",
                                       str(tmp_path), "--seed", "321,5", "--episodes", "40"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fold 0: test cat, boat" in out
    # fold 0 trains on 6 classes; no image holds only test classes: all 64 listed, 16 per class
    assert "train list (PFENet: novel pixels = background): 64 images" in out
    assert "per class: dog 16, cow 16" in out
    assert "test 5-shot seed 5 (pfenet): 40 episodes" in out
    d = episodes_dir("toy", cache_dir=tmp_path)
    names = sorted(p.name for p in d.iterdir())
    assert "folds.json" in names and "train-fold3.npz" in names
    assert "test-fold2-shot5-pfenet-seed5.npz" in names and "test-fold2-shot1-pfenet-seed321.npz" in names
    assert len([n for n in names if n.startswith("test-")]) == 4 * 2 * 2
    cfg = json.loads((d / "folds.json").read_text())["config"]
    assert cfg["seeds"] == [321, 5] and cfg["episodes"] == 40


def test_drop_novel_images_and_hsnet(tmp_path):
    tiny_stores(tmp_path)
    result = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir",
                                       str(tmp_path), "--fold", "1", "--shot", "1",
                                       "--protocol", "hsnet", "--drop-novel-images"])
    assert result.exit_code == 0, result.output
    # fold 1 tests dog, car: images with class 2 or 6 (any pixel) are dropped
    assert "BAM: novel images dropped): 32 images" in result.output
    assert "test 1-shot seed 0 (hsnet): 1000 episodes" in result.output
    d = episodes_dir("toy", cache_dir=tmp_path)
    assert (d / "train-fold1-dropnovel.npz").is_file()
    assert (d / "test-fold1-shot1-hsnet-seed0.npz").is_file()


def test_missing_mask_store_names_the_masks_command(tmp_path):
    result = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir",
                                       str(tmp_path)])
    assert result.exit_code != 0
    assert "qgnet-prep masks" in result.output and "--dataset toy" in result.output


def test_bad_options_are_usage_errors(tmp_path):
    tiny_stores(tmp_path)
    r = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir", str(tmp_path),
                                  "--pascal-train-set", "aug"])
    assert r.exit_code == 2 and "pascal only" in r.output
    r = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir", str(tmp_path),
                                  "--fold", "7"])
    assert r.exit_code == 1 and "folds are 0..3" in r.output
    r = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--seed", "x"])
    assert r.exit_code == 2 and "not an integer" in r.output


def test_zero_episodes_and_escaping_names_are_refused(tmp_path):
    """Issue 15 items 5 and 11: `--episodes 0` was silently 1000; `../../x` wrote outside."""
    tiny_stores(tmp_path)
    r = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir", str(tmp_path),
                                  "--episodes", "0"])
    assert r.exit_code == 1 and r.output == "Error: --episodes must be an int >= 1, got 0\n"
    r = CliRunner().invoke(main, ["episodes", "--dataset", "../../x", "--cache-dir",
                                  str(tmp_path / "c")])
    assert r.exit_code == 1 and "--dataset must be a name" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "c").exists()
    r = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir", str(tmp_path),
                                  "--shot", "0"])
    assert r.exit_code == 2 and "--shot must be an int >= 1, got 0" in r.output


def test_info_on_an_episodes_folder_prints_folds_counts_and_command(tmp_path):
    """Issue 15 item 8: it printed array dtypes."""
    tiny_stores(tmp_path)
    r = CliRunner().invoke(main, ["episodes", "--dataset", "toy", "--cache-dir", str(tmp_path),
                                  "--fold", "0", "--shot", "1", "--episodes", "12"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["info", str(episodes_dir("toy", cache_dir=tmp_path))])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "fold 0: test [1, 5] (cat, boat)" in out
    assert "test-fold0-shot1-pfenet-seed321.npz: fold 0, 1-shot, pfenet seed 321: 12 episodes" in out
    assert "train-fold0.npz: fold 0, split train" in out and "64 images" in out
    assert "command:" in out and "int64[" not in out
