"""Configuration flows one way: defaults < TOML file < environment < command line."""
import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from pipeline.cache import (
    cache_root,
    dataset_cache_dir,
    mask_store_path,
    params_hash,
    superpixel_store_path,
    validate_dataset_name,
)
from pipeline.errors import ConfigError
from pipeline.fileio import remove_stale_temporaries, write_json_atomic
from pipeline.provenance import provenance
from pipeline.settings import config_dict, format_command, resolve_config


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
    with pytest.raises(ConfigError, match="does not exist"):
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


@dataclass(frozen=True)
class Typed:
    shard_size: int | None = dataclasses.field(default=None, metadata={"min": 1})
    workers: int = dataclasses.field(default=2, metadata={"min": 1})
    limit: int | None = None
    scale: float = 1.0
    shots: tuple[int, ...] = (1, 5)
    out: str | None = None


def test_env_and_toml_values_take_the_fields_type(tmp_path):
    # issue 11: QGNET_SHARD_SIZE=64 used to arrive as the string '64'
    cfg = resolve_config(Typed, env={"QGNET_SHARD_SIZE": "64", "QGNET_SCALE": "3",
                                     "QGNET_SHOTS": "1,2", "QGNET_LIMIT": ""})
    assert cfg.shard_size == 64 and isinstance(cfg.shard_size, int)
    assert cfg.scale == 3.0 and cfg.shots == (1, 2) and cfg.limit is None
    f = tmp_path / "c.toml"
    f.write_text("scale = 2\nshots = [5]\nout = 'x'\n")
    cfg = resolve_config(Typed, config_file=f, env={})
    assert (cfg.scale, cfg.shots, cfg.out) == (2.0, (5,), "x") and isinstance(cfg.scale, float)


def test_wrong_type_in_toml_names_the_file_and_option(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('workers = "two"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: workers must be an int, got 'two'"):
        resolve_config(Typed, config_file=f, env={})
    with pytest.raises(ConfigError, match=r"\$QGNET_WORKERS must be an int, got 'abc'"):
        resolve_config(Typed, env={"QGNET_WORKERS": "abc"})


def test_invalid_toml_names_the_file(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("workers = = 2\n")
    with pytest.raises(ConfigError, match=r"broken.toml is not valid TOML"):
        resolve_config(Typed, config_file=f, env={})


def test_ranges_name_the_one_wrong_option(tmp_path):
    with pytest.raises(ConfigError, match=r"^--shard-size must be an int >= 1, got 0$"):
        resolve_config(Typed, cli={"shard_size": 0, "workers": 2}, env={})
    with pytest.raises(ConfigError, match=r"QGNET_WORKERS must be an int >= 1, got 0"):
        resolve_config(Typed, env={"QGNET_WORKERS": "0"})
    assert resolve_config(Typed, cli={"shard_size": 1}, env={}).shard_size == 1


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "..", ".hidden", "", "-x",
                                  "a b"])
def test_dataset_names_that_escape_the_cache_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="--dataset must be a name"):
        validate_dataset_name(name)
    with pytest.raises(ConfigError):
        dataset_cache_dir(name, cache_dir=tmp_path)


def test_plain_dataset_names_pass():
    for name in ("demo", "camvid", "my-data_v1.2", "COCO"):
        assert validate_dataset_name(name) == name


def test_format_command_quotes_for_the_shell():
    cmd = format_command("qgnet-prep", "masks", dataset="my data", split="train", limit=None,
                         overwrite=True, fold=[0, 1])
    assert cmd == "qgnet-prep masks --dataset 'my data' --split train --overwrite --fold 0 --fold 1"


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"data.tmp{dead}").mkdir()
    (tmp_path / f"data.tmp{dead}" / "x.png").write_bytes(b"1")
    (tmp_path / f"last.pt.tmp{dead}").write_bytes(b"1")
    (tmp_path / f"data.tmp{os.getppid()}").mkdir()  # a live process: kept
    (tmp_path / "data.tmpx").mkdir()                # not ours: kept
    removed = remove_stale_temporaries(tmp_path, base="data")
    assert [p.name for p in removed] == [f"data.tmp{dead}"]
    assert (tmp_path / f"last.pt.tmp{dead}").exists()
    assert {p.name for p in remove_stale_temporaries(tmp_path)} == {f"last.pt.tmp{dead}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"data.tmp{os.getppid()}",
                                                                 "data.tmpx"])
    sub = tmp_path / "checkpoints"
    sub.mkdir()
    (sub / f"step-0000002.pt.tmp{dead}").write_bytes(b"1")
    (sub / f"step-0000003.pt.tmp{os.getpid()}").write_bytes(b"1")  # this process: kept
    assert [p.name for p in remove_stale_temporaries(tmp_path / "absent", sub)] == [
        f"step-0000002.pt.tmp{dead}"]
