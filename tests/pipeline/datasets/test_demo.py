"""The generated demo dataset: deterministic, balanced, readable as a folder dataset."""
from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.datasets import DemoDataset, open_dataset
from pipeline.datasets.demo import CLASS_NAMES, CLASSES, MIN_PIXELS, generate_demo, prepare_demo


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _images_with_class(ds, split):
    """Per class id 1..C: how many images of ``split`` show it with >= 2048 pixels."""
    out = np.zeros(ds.num_classes + 1, int)
    for name in ds.ids(split):
        out += np.bincount(ds.load_mask(name).ravel(), minlength=256)[: ds.num_classes + 1] \
            >= MIN_PIXELS
    return out[1:]


def test_classes_are_shape_by_appearance():
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) == 20
    assert len(set(CLASSES)) == 20
    for fold in range(4):  # every PASCAL-style fold holds each shape once
        shapes = [CLASSES[5 * fold + j][0] for j in range(5)]
        assert len(set(shapes)) == 5


def test_same_seed_same_bytes(tmp_path):
    a = generate_demo(tmp_path / "a", n_train=4, n_val=2, seed=3)
    b = generate_demo(tmp_path / "b", n_train=4, n_val=2, seed=3)
    c = generate_demo(tmp_path / "c", n_train=4, n_val=2, seed=4)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert sorted(fa) == sorted(fb) and "DONE" in fa and "images/train_0003.png" in fa
    assert all(fa[k] == fb[k] for k in fa)
    assert fa["images/train_0000.png"] != fc["images/train_0000.png"]
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_demo(a, n_train=4, n_val=2, seed=3)
    generate_demo(a, n_train=2, n_val=1, seed=3, overwrite=True)
    assert (a / "train.txt").read_text().split() == ["train_0000", "train_0001"]
    assert not (a / "images" / "train_0003.png").exists()


def test_demo_dataset_reads_as_folder(demo_root):
    ds = DemoDataset(demo_root)
    assert ds.name == "demo" and ds.class_names == CLASS_NAMES and ds.num_classes >= 20
    assert len(ds.ids("train")) == 40 and len(ds.ids("val")) == 20
    assert not set(ds.ids("train")) & set(ds.ids("val"))
    sizes, seen = set(), {"train": set(), "val": set()}
    for split in ("train", "val"):
        for name in ds.ids(split):
            img, mask = ds.load_image(name), ds.load_mask(name)
            assert img.shape[:2] == mask.shape == ds.image_size(name)
            assert 200 <= mask.shape[0] <= 280 and 280 <= mask.shape[1] <= 360
            present = set(np.unique(mask).tolist()) - {0}
            assert len(present) >= 2 and present <= set(range(1, 21))
            seen[split] |= present
            sizes.add(mask.shape)
    assert len(sizes) >= 20  # sizes vary
    assert seen["train"] == seen["val"] == set(range(1, 21))  # every class in both splits
    assert _images_with_class(ds, "val").min() >= 1


def test_open_dataset_generates_when_absent(tmp_path, monkeypatch):
    import functools

    from pipeline.datasets import demo

    small = functools.partial(demo.prepare_demo, n_train=5, n_val=3)
    monkeypatch.setattr(demo, "prepare_demo", small)  # what default_root calls
    ds = open_dataset("demo", cache_dir=tmp_path)
    root = tmp_path / "demo" / "data"
    assert ds.root == root and (root / "DONE").is_file()
    assert len(ds.ids("train")) == 5 and len(ds.ids("val")) == 3
    assert not list(tmp_path.glob("demo/data.tmp*"))  # the temporary folder was renamed
    stamp = (root / "DONE").stat().st_mtime_ns
    assert open_dataset("demo", cache_dir=tmp_path).root == root  # reused, not regenerated
    assert (root / "DONE").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_default_demo_is_balanced_and_fast(tmp_path):
    """The default set (240 + 80) takes < 30 s of CPU on one core (about 12 s measured; CPU
    time, not wall time, so a busy machine does not fail it) and every class is in >= 15
    train and >= 5 val images with >= 2048 pixels."""
    t0 = time.process_time()
    ds = open_dataset("demo", cache_dir=tmp_path)
    cpu = time.process_time() - t0
    assert cpu < 30, f"generating the demo took {cpu:.1f} s of CPU"
    assert len(ds.ids("train")) == 240 and len(ds.ids("val")) == 80
    assert _images_with_class(ds, "train").min() >= 15
    assert _images_with_class(ds, "val").min() >= 5


def test_explicit_root_and_partial_cache(tmp_path, demo_root):
    assert open_dataset("demo", demo_root).ids("val")[0] == "val_0000"
    data = tmp_path / "demo" / "data"
    (data / "images").mkdir(parents=True)  # a half-written dataset without DONE
    path = prepare_demo(tmp_path, n_train=3, n_val=2)
    assert path == data and (data / "DONE").is_file()
    assert len(open_dataset("demo", cache_dir=tmp_path).ids("train")) == 3


def test_cli(tmp_path):
    from cli.prep import main

    runner = CliRunner()
    args = ["demo", "--cache-dir", str(tmp_path), "--n-train", "3", "--n-val", "2"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "3 train + 2 val" in res.output
    assert (tmp_path / "demo" / "data" / "DONE").is_file()
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and "already complete" in res.output
    res = runner.invoke(main, args[:-4] + ["--n-train", "2", "--n-val", "1", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert len(open_dataset("demo", cache_dir=tmp_path).ids("train")) == 2


def test_demo_folds_hold_every_shape_and_mix_appearances(demo_root):
    """The episodes stage reads folds.txt: each fold's novel classes are five different
    shapes with more than one appearance (the interleaved default would put all 'solid'
    classes in fold 0)."""
    from pipeline.datasets.demo import CLASS_NAMES
    from pipeline.episodes import fold_classes

    for fold in range(4):
        test, train = fold_classes("demo", len(CLASS_NAMES), fold,
                                   folds_file=demo_root / "folds.txt", class_names=CLASS_NAMES)
        assert list(test) == [5 * fold + j + 1 for j in range(5)]
        names = [CLASS_NAMES[c - 1] for c in test]
        assert len({n.split("_")[-1] for n in names}) == 5  # five shapes
        assert len({n.split("_")[0] for n in names}) > 1    # mixed appearances
        assert not set(test) & set(train)
