"""The prior's recipe defaults (issue 10 §2): per-dataset epochs, backbone and init, and
``--split all`` (train + val images, one patch store per split, no labels read)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from model.prior.config import PriorConfig, finalize_config
from model.prior.trainer import build_data
from model.utils import DistInfo
from pipeline.store import ShardedStore

_spec = importlib.util.spec_from_file_location(
    "prior_trainer_helpers", Path(__file__).resolve().parent / "test_trainer.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.mark.parametrize("dataset, backbone, init, epochs, batch", [
    ("pascal", "resnet50", "none", 1000, 256),   # paper 4.2 / Table 5: random init, 1,000 epochs
    ("coco", "resnet50", "none", 200, 256),      # paper: 200 epochs on COCO
    ("folder", "efficientnet_lite0", "imagenet", 200, 256),
    ("demo", "efficientnet_lite0", "imagenet", 200, 64),
])
def test_dataset_defaults(dataset, backbone, init, epochs, batch):
    cfg = finalize_config(PriorConfig(dataset=dataset, workers=0))
    assert (cfg.backbone, cfg.init, cfg.epochs, cfg.batch_size) == (backbone, init, epochs, batch)
    assert cfg.lr == pytest.approx(0.03 * batch / 256)


def test_explicit_options_win_and_init_follows_the_backbone(tmp_path):
    cfg = finalize_config(PriorConfig(dataset="pascal", epochs=7, batch_size=8, workers=0))
    assert (cfg.epochs, cfg.batch_size) == (7, 8)
    # a ResNet on the demo: random init (no offline ImageNet ResNet), not an error
    assert finalize_config(PriorConfig(dataset="demo", backbone="resnet50", workers=0)).init == "none"
    w = tmp_path / "w.pt"
    torch.save({}, w)
    assert finalize_config(PriorConfig(dataset="pascal", init=str(w), workers=0)).init == str(w)
    with pytest.raises(ValueError, match="--split all"):
        finalize_config(PriorConfig(dataset="folder", split="all", patch_store="x.zarr", workers=0))


def test_split_all_reads_train_and_val(tmp_path, monkeypatch):
    monkeypatch.setitem(helpers.BACKBONES, "tiny", helpers.TinyBackbone)
    root = tmp_path / "data"
    train_ids = helpers.make_folder_dataset(root, tmp_path / "train.zarr")
    # a val store for val.txt (one image, its own map: all ones, to tell it apart)
    val_id = (root / "val.txt").read_text().split()[0]
    from PIL import Image

    hw = np.asarray(Image.open(root / "images" / f"{val_id}.jpg")).shape[:2]
    val = ShardedStore.create(tmp_path / "val.zarr", ids=[val_id], hw=np.array([hw]), maps="labels",
                              dtype="uint16", attrs={"kind": "superpixels", "dataset": "folder",
                                                     "split": "val", "method": "slic"},
                              extras={"n_segments": ((), "int32")}, shard_size=16)
    val.write_shard(0, [np.ones(hw, np.uint16)], extras={"n_segments": np.array([1], np.int32)})
    stores = {"train": tmp_path / "train.zarr", "val": tmp_path / "val.zarr"}
    import pipeline.superpixel_stage as stage

    monkeypatch.setattr(stage, "locate_superpixel_store",
                        lambda ds, split, method, cache_dir=None: ShardedStore.open(stores[split]))
    base = dict(dataset="folder", root=str(root), backbone="tiny", init="none", crop=32,
                batch_size=4, workers=0, device="cpu")
    pairs, _, _ = build_data(finalize_config(PriorConfig(**base)), DistInfo(), device=torch.device("cpu"))
    n_train = len(train_ids) - 1  # one failed row is dropped
    assert len(pairs) == n_train
    cfg = finalize_config(PriorConfig(**base, split="all"))
    assert cfg.out.endswith("folder-all-tiny-both")
    pairs, sampler, _ = build_data(cfg, DistInfo(), device=torch.device("cpu"))
    assert len(pairs) == n_train + 1 and len(pairs.dropped) == 1
    last = pairs[(0, n_train)]  # the val image, with its own (all-ones) map
    assert int(last["index"]) == n_train and int(last["row"]) == 0
    assert set(torch.unique(last["map_q"]).tolist()) <= {0, 1}
    first = pairs[(0, 0)]
    assert torch.equal(first["im_q"], pairs[(0, 0)]["im_q"])  # deterministic per (epoch, index)
    assert len(torch.unique(first["map_q"])) > 2  # a train image's SLIC map
    assert sorted(i for _, i in sampler) == list(range(len(pairs)))  # one epoch sees every image
