"""``qgnet-train prior``: help, clear errors, and a tiny end-to-end run (click's runner)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.train import main
from model.backbones import BACKBONES

_spec = importlib.util.spec_from_file_location(
    "prior_trainer_tests", Path(__file__).resolve().parents[1] / "model" / "prior" / "test_trainer.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    monkeypatch.setitem(BACKBONES, "tiny", helpers.TinyBackbone)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("prior_cli")
    helpers.make_folder_dataset(base / "data", base / "slic-train.zarr")
    return {"root": base / "data", "store": base / "slic-train.zarr"}


TINY = ["--backbone", "tiny", "--init", "none", "--crop", "64", "--batch-size", "8",
        "--queue-size", "16", "--local-queue-size", "32", "--dim", "16", "--mlp-hidden", "32",
        "--patches-per-image", "4", "--split-bn-groups", "2", "--workers", "0",
        "--device", "cpu", "--no-progress", "--log-every", "1"]


def test_help():
    res = CliRunner().invoke(main, ["prior", "--help"])
    assert res.exit_code == 0, res.output
    for flag in ("--patches", "--resume", "--export-only", "--max-steps", "--amp / --no-amp"):
        assert flag in res.output


def test_missing_store_names_the_prep_command(tiny, tmp_path):
    res = CliRunner().invoke(main, ["prior", "--dataset", "folder", "--root", str(tiny["root"]),
                                    "--cache-dir", str(tmp_path / "cache"), *TINY,
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    assert "qgnet-prep superpixels --dataset folder --split train --method slic" in res.output


def test_imagenet_init_for_resnet_explains(tmp_path):
    # asked explicitly: the default is now random init for ResNets (issue 15 item 11)
    res = CliRunner().invoke(main, ["prior", "--dataset", "folder", "--backbone", "resnet50",
                                    "--init", "imagenet", "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    assert "--init PATH" in res.output and "--init none" in res.output


def test_wrong_store_is_refused(tiny, tmp_path):
    res = CliRunner().invoke(main, ["prior", "--dataset", "folder", "--root", str(tiny["root"]),
                                    "--split", "val", "--patch-store", str(tiny["store"]), *TINY,
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    assert "made for dataset 'folder' split 'train'" in res.output


def test_tiny_run_end_to_end_and_export_only(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("QGNET_SEED", "7")  # environment < command line
    out = tmp_path / "run"
    cfg_file = tmp_path / "prior.toml"
    cfg_file.write_text("[prior]\nepochs = 3\nlr = 0.01\n")
    res = CliRunner().invoke(main, ["prior", "--dataset", "folder", "--root", str(tiny["root"]),
                                    "--patch-store", str(tiny["store"]), *TINY, "--max-steps", "2",
                                    "--config", str(cfg_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 3 and cfg["lr"] == 0.01 and cfg["seed"] == 7 and cfg["crop"] == 64
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "checkpoints" / "step-0000002.pt").is_file()
    assert (out / "prior_extractor.pt").is_file() and (out / "train.log").is_file()
    ckpt = torch.load(out / "checkpoints" / "step-0000002.pt", weights_only=True)
    assert ckpt["config"]["seed"] == 7 and ckpt["step"] == 2
    (out / "prior_extractor.pt").unlink()
    res = CliRunner().invoke(main, ["prior", "--export-only", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "prior_extractor.pt").is_file()
    # continue the same run to its end from the command line (bare --resume + --out)
    res = CliRunner().invoke(main, ["prior", "--resume", "--out", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.output
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 3 * 6 + 1))
