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


# ------------------------------------------------------------------------------ issue 21 §2
from pipeline.settings import (  # noqa: E402
    check_config,
    check_environment,
    env_names,
    merge_unset,
    option,
    read_saved,
)


@dataclass(frozen=True)
class Opts:
    lr: float | None = option(None, gt=0)
    momentum: float = option(0.9, min=0, max=1)
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    use_prior_map: bool = option(True, flag="--prior-map/--no-prior-map")
    init: str | None = option(None)
    val_every: int | None = option(None, min=1, what="steps")
    seeds: tuple[int, ...] | None = option(None, min=0)


def test_bounds_choices_and_exclusive_minimum_for_every_source(tmp_path):
    with pytest.raises(ConfigError, match=r"^--lr must be a number > 0, got 0.0$"):
        resolve_config(Opts, cli={"lr": 0.0}, env={})
    with pytest.raises(ConfigError, match=r"^\$QGNET_MOMENTUM must be a number in 0..1, got 2.0$"):
        resolve_config(Opts, env={"QGNET_MOMENTUM": "2"})
    f = tmp_path / "c.toml"
    f.write_text('device = "tpu"\n')
    with pytest.raises(ConfigError, match=r"c.toml: device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_config(Opts, config_file=f, env={})
    with pytest.raises(ConfigError, match=r"^--val-every \(steps\) must be an int >= 1, got 0$"):
        resolve_config(Opts, cli={"val_every": 0}, env={})
    with pytest.raises(ConfigError, match=r"--seeds must be an int >= 0, got -1"):
        resolve_config(Opts, cli={"seeds": "3,-1"}, env={})
    # a config built in Python gets the same checks
    with pytest.raises(ConfigError, match=r"^--lr must be a number > 0, got -1; the demo"):
        check_config(Opts(lr=-1), hints={"lr": "the demo default is 0.0025"})
    assert check_config(Opts()) == Opts()


def test_none_is_unset_and_none_the_word_is_a_value_for_strings():
    cfg = resolve_config(Opts, env={"QGNET_LR": "none", "QGNET_INIT": "none", "QGNET_VAL_EVERY": ""})
    assert cfg.lr is None and cfg.init == "none" and cfg.val_every is None
    assert resolve_config(Opts, cli={"init": ""}, env={}).init is None


def test_environment_names_follow_the_flag_too():
    assert env_names(Opts)["QGNET_PRIOR_MAP"] == "use_prior_map"
    assert env_names(Opts)["QGNET_USE_PRIOR_MAP"] == "use_prior_map"
    assert resolve_config(Opts, env={"QGNET_PRIOR_MAP": "false"}).use_prior_map is False
    assert resolve_config(Opts, env={"QGNET_PRIOR_MAP": "0", "QGNET_USE_PRIOR_MAP": "0"}
                          ).use_prior_map is False
    with pytest.raises(ConfigError, match="set the same option --prior-map"):
        resolve_config(Opts, env={"QGNET_PRIOR_MAP": "false", "QGNET_USE_PRIOR_MAP": "true"})


def test_unknown_variables_are_refused_with_the_closest_name():
    known = env_names(Opts)
    check_environment(known, {"QGNET_LR": "1", "HOME": "/root"})
    with pytest.raises(ConfigError, match=r"\$QGNET_PRIOR_MAPP \(did you mean \$QGNET_PRIOR_MAP\?\)"):
        check_environment(known, {"QGNET_PRIOR_MAPP": "false"})
    with pytest.raises(ConfigError, match=r"\$QGNET_ZZZ: no qgnet command reads"):
        check_environment(known, {"QGNET_ZZZ": "1"})


def test_resumed_config_refuses_changes_from_any_source(tmp_path):
    saved = {"lr": 0.5, "momentum": 0.9, "device": "cpu"}
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0.5, now 0.1 \(\$QGNET_LR\)"):
        resolve_config(Opts, env={"QGNET_LR": "0.1"}, base=saved, resumable={"device"})
    cfg = resolve_config(Opts, env={"QGNET_DEVICE": "auto"}, cli={"lr": 0.5}, base=saved,
                         resumable={"device"})
    assert (cfg.lr, cfg.device, cfg.momentum) == (0.5, "auto", 0.9)


def test_saved_configs_with_the_old_unset_spellings_load():
    got = read_saved(Opts, {"lr": 0.0, "val_every": 0, "init": "", "momentum": 0.0, "gone": 1,
                            "seeds": [1, 2]})
    assert got == {"lr": None, "val_every": None, "init": None, "momentum": 0.0, "seeds": (1, 2)}
    assert Opts(**got).momentum == 0.0
    assert merge_unset({"a": None, "b": 0, "c": ""}, {"a": 3, "b": 4, "c": 5}) == {
        "a": 3, "b": 0, "c": ""}
