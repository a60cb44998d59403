"""qgnet-train fss / qgnet-eval fss|regions|show on a tiny folder dataset; errors that say
which command builds what is missing."""
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from cli.eval_fss import fss as eval_fss
from cli.eval_regions import regions
from cli.eval_show import show
from cli.train_fss import fss as train_fss


@pytest.fixture(scope="module")
def toy(make_fss_toy):
    """The few-shot toy dataset of tests/conftest.py with 4 test episodes."""
    return make_fss_toy("fsscli", n_episodes=4)


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


def test_eval_config_sources_and_types(tmp_path, monkeypatch):
    """qgnet-eval fss resolves EvalConfig: defaults < TOML [eval] < QGNET_* < command line,
    every value converted by the field's type; "not set" is None."""
    from model.fss.evaluate import EvalConfig
    from pipeline.errors import ConfigError
    from pipeline.settings import resolve_config

    d = resolve_config(EvalConfig, env={})
    assert (d.checkpoint, d.shot, d.threads, d.seeds, d.out) == (None, None, None, None, None)
    # protocol, scoring, seeds unset: the benchmark's (pipeline.benchmarks.eval_protocol)
    assert (d.protocol, d.scoring, d.workers) == (None, None, 2)
    assert (d.hsnet_size, d.amp) == (None, None)  # amp None: the checkpoint's
    assert resolve_config(EvalConfig, cli={"protocol": "hsnet"}, env={}).protocol == "hsnet"
    with pytest.raises(ConfigError, match="--protocol"):
        resolve_config(EvalConfig, cli={"protocol": "bam"}, env={})
    assert resolve_config(EvalConfig, env={"QGNET_SCORING": "hsnet", "QGNET_HSNET_SIZE": "64"}
                          ).hsnet_size == 64
    with pytest.raises(ConfigError, match="--hsnet-size"):
        resolve_config(EvalConfig, cli={"hsnet_size": 3}, env={})
    toml = tmp_path / "e.toml"
    toml.write_text('[eval]\nseeds = "1,2"\nworkers = 1\nshot = 5\n')
    cfg = resolve_config(EvalConfig, config_file=toml, section="eval",
                         env={"QGNET_WORKERS": "3", "QGNET_AMP": "false"}, cli={"shot": 1})
    assert (cfg.seeds, cfg.workers, cfg.amp, cfg.shot) == ((1, 2), 3, False, 1)
    assert resolve_config(EvalConfig, cli={"seeds": "7,8"}, env={}).seeds == (7, 8)
    with pytest.raises(ConfigError, match="--shot"):
        resolve_config(EvalConfig, cli={"shot": 0}, env={})
    with pytest.raises(ConfigError, match=r"\$QGNET_WORKERS"):
        resolve_config(EvalConfig, env={"QGNET_WORKERS": "two"})
    monkeypatch.delenv("QGNET_CHECKPOINT", raising=False)
    r = CliRunner().invoke(eval_fss, ["--device", "cpu"])
    assert r.exit_code == 2 and "--checkpoint is required" in r.output
    r = CliRunner().invoke(eval_fss, ["--checkpoint", "x.pt", "--seeds", "1,x"])
    assert r.exit_code == 1 and "--seeds" in r.output


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
    # best.pt is chosen on the validation seed's episodes, not on the test file (seed 321)
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v.get("kind") == "val"]
    assert vals and {v["val_file"] for v in vals} == {"test-fold0-shot1-pfenet-seed123.npz"}

    # the checkpoint alone rebuilds the model (no dataset / backbone options)
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(run / "best.pt"), "--workers", "0",
                                      "--seeds", "321", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and "FB-IoU" in r.output
    # the table names each number's scoring; PFENet's is the one comparable with the paper
    assert "| pfenet (headline) |" in r.output and "| exact |" in r.output
    assert "comparable with the QGNet, PFENet and BAM tables" in r.output
    res = json.loads((run / "results.json").read_text())
    (entry,) = res.values()
    assert entry["shot"] == 1 and entry["episodes"] == [4]
    assert entry["scoring"] == "pfenet" and set(entry["scores"]) == {"pfenet", "exact"}
    assert entry["miou"] == entry["scores"]["pfenet"]["miou"]
    assert set(entry["runs"][0]["per_episode"]["confusion"]) == {"pfenet", "exact"}
    assert set(entry["per_class"]) == {"1", "5"} and entry["episodes_per_s"] > 0
    assert entry["amp_from"] == "checkpoint"  # trained on CPU: fp32, evaluated in fp32
    from model.checkpoint import load_checkpoint
    from model.fss.evaluate import checkpoint_amp

    assert load_checkpoint(run / "best.pt")["precision"] == "fp32"
    assert checkpoint_amp({"precision": "bf16"}) and not checkpoint_amp({"precision": "fp32"})
    assert not checkpoint_amp({"config": {"amp": False}})  # older checkpoints: the --amp option
    assert "| 1 c1 |" in (run / "results.md").read_text()

    # HSNet's scoring is a pass of its own, recorded beside the canvas entry
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(run / "best.pt"), "--workers", "0",
                                      "--no-progress", "--device", "cpu", "--scoring",
                                      "hsnet-original", "--hsnet-size", "41"])
    assert r.exit_code == 0, r.output
    assert "| hsnet-original |" in r.output and "square" in r.output
    res = json.loads((run / "results.json").read_text())
    assert sorted(res) == ["fold0-1shot-pfenet-4ep", "fold0-1shot-pfenet-4ep-hsnet-original41"]
    hs = res["fold0-1shot-pfenet-4ep-hsnet-original41"]
    assert hs["scoring"] == "hsnet-original" and hs["input_size"] == 41 and list(hs["scores"]) == ["hsnet-original"]
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(run / "best.pt"), "--scoring", "bam"])
    assert r.exit_code == 2 and "--scoring" in r.output

    # the same evaluation configured by a TOML file and QGNET_* (EvalConfig), into --out
    toml = toy["base"] / "eval.toml"
    toml.write_text(f'workers = 0\n[eval]\ncheckpoint = "{run / "best.pt"}"\nseeds = [321]\n'
                    f'device = "cpu"\nprogress = false\nworkers = 3\n')
    r = CliRunner().invoke(eval_fss, ["--config", str(toml), "--workers", "0",
                                      "--out", str(toy["base"] / "from-toml")],
                           env={"QGNET_N_EPISODES": "2", "QGNET_WORKERS": "5"})
    assert r.exit_code == 0, r.output
    (again,) = json.loads((toy["base"] / "from-toml" / "results.json").read_text()).values()
    assert again["episodes"] == [2] and again["seeds"] == [321] and again["device"] == "cpu"

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
