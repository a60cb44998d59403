"""Configuration flows one way: defaults < TOML file < environment < command line."""
from dataclasses import dataclass

import pytest

from pipeline.config import (
    cache_root,
    config_dict,
    mask_store_path,
    params_hash,
    provenance,
    resolve_config,
    superpixel_store_path,
    write_json_atomic,
)


@dataclass(frozen=True)
class Cfg:
    epochs: int = 200
    lr: float = 0.03
    amp: bool = True
    name: str = "x"
    bins: tuple = (60, 30, 15, 8)


def test_defaults_only():
    assert resolve_config(Cfg, env={}) == Cfg()


def test_priority_file_env_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 5\nlr = 0.1\n[prior]\nname = "from-file"\n')
    cfg = resolve_config(Cfg, config_file=f, section="prior", env={})
    assert (cfg.epochs, cfg.lr, cfg.name) == (5, 0.1, "from-file")
    cfg = resolve_config(Cfg, config_file=f, section="prior",
                         env={"QGNET_EPOCHS": "7", "QGNET_AMP": "false", "QGNET_BINS": "8,4"})
    assert (cfg.epochs, cfg.amp, cfg.bins) == (7, False, (8, 4))
    cfg = resolve_config(Cfg, config_file=f, section="prior", env={"QGNET_EPOCHS": "7"},
                         cli={"epochs": 9, "lr": None})
    assert (cfg.epochs, cfg.lr) == (9, 0.1)  # None on the command line = not given


def test_bad_inputs_name_the_source(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("epoch = 5\n")
    with pytest.raises(ValueError, match="unknown option.*epoch"):
        resolve_config(Cfg, config_file=f, env={})
    with pytest.raises(ValueError, match="QGNET_EPOCHS"):
        resolve_config(Cfg, env={"QGNET_EPOCHS": "many"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_config(Cfg, config_file=tmp_path / "missing.toml", env={})


def test_cache_root_priority(monkeypatch, tmp_path):
    monkeypatch.delenv("QGNET_CACHE_DIR", raising=False)
    assert str(cache_root()) == "cache"
    monkeypatch.setenv("QGNET_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "cli") == tmp_path / "cli"


def test_store_paths_are_keyed_by_parameters(tmp_path):
    a = superpixel_store_path("coco", "slic", "train", {"n_segments": 100}, cache_dir=tmp_path)
    b = superpixel_store_path("coco", "slic", "train", {"n_segments": 200}, cache_dir=tmp_path)
    assert a != b and a.parent == tmp_path / "coco" / "superpixels"
    assert a.name.startswith("slic-train-") and a.suffix == ".zarr"
    assert mask_store_path("pascal", "val", cache_dir=tmp_path) == tmp_path / "pascal/masks/val.zarr"
    assert params_hash({"a": 1, "b": (1, 2)}) == params_hash({"b": [1, 2], "a": 1})


def test_provenance_and_atomic_json(tmp_path):
    p = provenance({"n": 3, "path": tmp_path})
    assert p["params"] == {"n": 3, "path": str(tmp_path)}
    assert "numpy" in p["versions"] and p["command"]
    write_json_atomic(tmp_path / "x" / "c.json", config_dict(Cfg()))
    text = (tmp_path / "x" / "c.json").read_text()
    assert '"bins": [' in text and not list((tmp_path / "x").glob("*.tmp*"))
