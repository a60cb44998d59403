"""Every numeric option of every command is range-checked before anything is written, 0 is
never "unset", and the environment is read by the options' names (issue 22 §4, issue 21 §2).

Each failure is one line (``Error: ...``, cli/_errors.py) or click's usage error, with exit
code 1 or 2, and leaves no run dir, store or output folder behind."""
import dataclasses

import pytest
import torch
from click.testing import CliRunner

from cli.app import main as app_cli
from cli.demo import main as demo_cli
from cli.eval_compare import compare as compare_cli
from cli.eval_fss import fss as eval_cli
from cli.eval_regions import regions as regions_cli
from cli.eval_show import show as show_cli
from cli.predict import main as predict_cli
from cli.prep_demo import demo as prep_demo_cli
from cli.prep_episodes import episodes as episodes_cli
from cli.prep_masks import masks as masks_cli
from cli.train_fss import fss as fss_cli
from cli.train_prior import prior as prior_cli


@pytest.fixture(scope="module")
def toy(make_fss_toy):
    return make_fss_toy("options", n_episodes=4)


def _fss(toy, out, *extra):
    return ["--dataset", "folder", "--cache-dir", toy["cache"], "--no-prior-map", "--crop", "33",
            "--batch-size", "2", "--epochs", "1", "--workers", "0", "--threads", "1",
            "--device", "cpu", "--val-episodes", "0", "--no-progress", "--out", str(out), *extra]


def _refused(r, *fragments, code=1):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    for f in fragments:
        assert f in r.output, r.output
    if code == 1:
        assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output


# ------------------------------------------------------------------------------ qgnet-train fss
@pytest.mark.parametrize("args, message", [
    (["--crop", "0"], "--crop (crop side in pixels) must be an int >= 9, got 0"),
    (["--batch-size", "0"], "--batch-size (global batch) must be an int >= 1, got 0"),
    (["--epochs", "0"], "--epochs must be an int >= 1, got 0"),
    (["--lr", "0"], "--lr must be a number > 0, got 0.0"),
    (["--lr", "-1"], "--lr must be a number > 0, got -1.0"),
    (["--bins", "a,b"], "--bins 'a,b': must be auto or a comma list of positive numbers"),
    (["--bins", "30,-1"], "--bins '30,-1'"),
    (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
    (["--max-steps", "0"], "--max-steps must be an int >= 1, got 0"),
    (["--val-every", "0"], "--val-every must be an int >= 1, got 0"),
    (["--ckpt-every", "0"], "--ckpt-every must be an int >= 1, got 0"),
    (["--log-every", "0"], "--log-every must be an int >= 1, got 0"),
    (["--val-episodes", "-1"], "--val-episodes must be an int >= 0, got -1"),
    (["--momentum", "2"], "--momentum must be a number in 0..1, got 2.0"),
    (["--scale-min", "0"], "--scale-min must be a number > 0, got 0.0"),
    (["--lr-scale", "0"], "--lr-scale must be a number > 0, got 0.0"),
    (["--weight-decay", "-1"], "--weight-decay must be a number >= 0, got -1.0"),
    (["--workers", "-1"], "--workers must be an int >= 0, got -1"),
])
def test_fss_numbers_out_of_range_are_refused_before_the_run_dir(toy, tmp_path, args, message):
    """Issue 22 §4: --crop 0 / --batch-size 0 / --epochs 0 / --lr 0 silently took the dataset
    defaults; --lr -1, --bins a,b, --seed -1 failed after creating the run dir."""
    out = tmp_path / "run"
    _refused(CliRunner().invoke(fss_cli, _fss(toy, out, *args)), message)
    assert not out.exists()


def test_zero_is_never_unset_and_none_is(toy, tmp_path):
    from model.fss.config import FssConfig, finalize_config

    cfg = finalize_config(FssConfig(dataset="demo", use_prior_map=False))
    assert (cfg.crop, cfg.batch_size, cfg.epochs, cfg.lr) == (161, 4, 20, 0.0025)
    for name in ("crop", "batch_size", "epochs", "lr", "scale_min"):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')}"):
            finalize_config(dataclasses.replace(cfg, **{name: 0}))
    # the demo default crop in the message, where the value came from Python
    with pytest.raises(ValueError, match="the demo default is 161"):
        finalize_config(FssConfig(dataset="demo", use_prior_map=False, crop=0))


# ------------------------------------------------------------------------------ qgnet-train prior
@pytest.mark.parametrize("args, message", [
    (["--temperature", "0"], "--temperature must be a number > 0, got 0.0"),
    (["--temperature", "-1"], "--temperature must be a number > 0, got -1.0"),
    (["--patches-per-image", "0"], "--patches-per-image must be an int >= 1, got 0"),
    (["--log-every", "0"], "--log-every must be an int >= 1, got 0"),
    (["--momentum", "2"], "--momentum must be a number in 0..1, got 2.0"),
    (["--lr", "0"], "--lr must be a number > 0, got 0.0"),
    (["--batch-size", "0"], "--batch-size (global batch) must be an int >= 1, got 0"),
    (["--crop", "8"], "--crop (crop side in pixels) must be an int >= 32, got 8"),
    (["--queue-size", "0"], "--queue-size must be an int >= 1, got 0"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints must be an int >= 0, got -1"),
    (["--scale-min", "1.5"], "--scale-min must be a number > 0 and <= 1, got 1.5"),
    (["--limit", "0"], "--limit must be an int >= 1, got 0"),
    (["--seed", "-3"], "--seed must be an int >= 0, got -3"),
])
def test_prior_numbers_out_of_range_are_one_line_errors(tmp_path, args, message):
    """Issue 22 §4: --temperature 0, --patches-per-image 0, --log-every 0 gave tracebacks;
    --temperature -1 and --momentum 2 were accepted."""
    out = tmp_path / "run"
    r = CliRunner().invoke(prior_cli, ["--dataset", "demo", "--cache-dir", str(tmp_path),
                                       "--out", str(out), *args])
    _refused(r, message)
    assert not out.exists() and not (tmp_path / "demo").exists()


def test_prior_dataset_outside_the_cache_writes_nothing(tmp_path, monkeypatch):
    """Issue 22 §4: --dataset ../x wrote runs/x-.../train.log before refusing the name."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(prior_cli, ["--dataset", "../x", "--device", "cpu"])
    _refused(r, "--dataset must be a name made of letters")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ environment
def test_device_errors_are_one_line(tmp_path, monkeypatch):
    """Issue 22 §4: QGNET_DEVICE=tpu and --device cuda without CUDA gave tracebacks."""
    monkeypatch.setenv("QGNET_DEVICE", "tpu")
    _refused(CliRunner().invoke(fss_cli, ["--dataset", "folder", "--out", str(tmp_path / "r")]),
             "$QGNET_DEVICE must be one of auto, cpu, cuda, got 'tpu'")
    _refused(CliRunner().invoke(prior_cli, ["--dataset", "demo", "--out", str(tmp_path / "r")]),
             "$QGNET_DEVICE must be one of auto, cpu, cuda, got 'tpu'")
    _refused(CliRunner().invoke(eval_cli, ["--checkpoint", str(tmp_path / "x.pt")]),
             "$QGNET_DEVICE must be one of auto, cpu, cuda, got 'tpu'")
    monkeypatch.delenv("QGNET_DEVICE")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    _refused(CliRunner().invoke(fss_cli, ["--dataset", "folder", "--no-prior-map",
                                          "--device", "cuda", "--out", str(tmp_path / "r")]),
             "--device cuda asked for CUDA but torch sees no GPU")
    _refused(CliRunner().invoke(prior_cli, ["--dataset", "demo", "--device", "cuda",
                                            "--out", str(tmp_path / "r")]),
             "--device cuda asked for CUDA but torch sees no GPU")
    assert not (tmp_path / "r").exists()


def test_env_names_follow_the_flag_and_unknown_ones_are_refused(toy, tmp_path, monkeypatch):
    """Issue 22 §4: QGNET_PRIOR_MAP=false was silently ignored (the field is use_prior_map)."""
    monkeypatch.setenv("QGNET_PRIOR_MAP", "false")
    out = tmp_path / "baseline"
    args = [a for a in _fss(toy, out, "--max-steps", "1") if a != "--no-prior-map"]
    r = CliRunner().invoke(fss_cli, args)
    assert r.exit_code == 0, r.output
    assert torch.load(out / "last.pt", weights_only=True)["model_meta"]["use_prior_map"] is False
    monkeypatch.setenv("QGNET_USE_PRIOR_MAP", "true")  # both names, different values
    _refused(CliRunner().invoke(fss_cli, args), "$QGNET_USE_PRIOR_MAP", "$QGNET_PRIOR_MAP",
             "unset one of them")
    monkeypatch.delenv("QGNET_USE_PRIOR_MAP")
    monkeypatch.delenv("QGNET_PRIOR_MAP")
    monkeypatch.setenv("QGNET_PRIOR_MAPS", "false")  # a typo
    _refused(CliRunner().invoke(fss_cli, args), "unknown environment variable(s) "
             "$QGNET_PRIOR_MAPS (did you mean $QGNET_PRIOR_MAP?)")
    _refused(CliRunner().invoke(masks_cli, ["--dataset", "folder", "--cache-dir", str(tmp_path)]),
             "$QGNET_PRIOR_MAPS")
    monkeypatch.delenv("QGNET_PRIOR_MAPS")
    # a variable another command reads is not unknown: the prep stores' shard size while training
    monkeypatch.setenv("QGNET_SHARD_SIZE", "64")
    r = CliRunner().invoke(fss_cli, _fss(toy, tmp_path / "known", "--max-steps", "1"))
    assert r.exit_code == 0, r.output


def test_threads_zero_from_the_environment_is_refused(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("QGNET_THREADS", "0")
    args = _fss(toy, tmp_path / "r")
    del args[args.index("--threads"):args.index("--threads") + 2]
    _refused(CliRunner().invoke(fss_cli, args), "$QGNET_THREADS must be an int >= 1, got 0")
    _refused(CliRunner().invoke(eval_cli, ["--checkpoint", str(tmp_path / "x.pt")]),
             "$QGNET_THREADS must be an int >= 1, got 0")
    assert not (tmp_path / "r").exists()


def test_resume_refuses_a_fold_from_the_environment_or_the_file(toy, tmp_path, monkeypatch):
    """Issue 22 §4: with --resume, QGNET_FOLD or a TOML fold that differs from the checkpoint
    was silently ignored; it is refused as --fold is."""
    run = tmp_path / "run"
    assert CliRunner().invoke(fss_cli, _fss(toy, run, "--max-steps", "1")).exit_code == 0
    before = (run / "last.pt").read_bytes()
    monkeypatch.setenv("QGNET_FOLD", "1")
    _refused(CliRunner().invoke(fss_cli, ["--resume", str(run), "--max-steps", "2"]),
             "cannot resume", "fold: checkpoint 0, now 1 ($QGNET_FOLD)")
    monkeypatch.delenv("QGNET_FOLD")
    toml = tmp_path / "c.toml"
    toml.write_text("[fss]\nfold = 2\ncrop = 33\n")
    _refused(CliRunner().invoke(fss_cli, ["--resume", str(run), "--config", str(toml)]),
             f"fold: checkpoint 0, now 2 ({toml}: fold)")
    assert (run / "last.pt").read_bytes() == before
    toml.write_text("[fss]\nfold = 0\ncrop = 33\nworkers = 0\n")  # equal or resumable: fine
    r = CliRunner().invoke(fss_cli, ["--resume", str(run), "--config", str(toml),
                                     "--max-steps", "2"])
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------ other commands
@pytest.mark.parametrize("cli, args, fragment, code", [
    (eval_cli, ["--episodes", "0"], "--episodes must be an int >= 1, got 0", 1),
    (eval_cli, ["--batch-size", "0"], "--batch-size must be an int >= 1, got 0", 1),
    (eval_cli, ["--workers", "-1"], "--workers must be an int >= 0, got -1", 1),
    (eval_cli, ["--shot", "0"], "--shot must be an int >= 1, got 0", 1),
    (eval_cli, ["--threads", "0"], "--threads must be an int >= 1, got 0", 1),
    (eval_cli, ["--seeds", "1,-2"], "--seeds must be an int >= 0, got -2", 1),
    (regions_cli, ["--episodes", "0"], "0 is not in the range x>=1", 2),
    (regions_cli, ["--threads", "0"], "0 is not in the range x>=1", 2),
    (regions_cli, ["--seed", "-1"], "-1 is not in the range x>=0", 2),
    (show_cli, ["--workers", "-1", "--out", "o"], "-1 is not in the range x>=0", 2),
    (show_cli, ["--shot", "0", "--out", "o"], "0 is not in the range x>=1", 2),
    (compare_cli, ["--checkpoint", "b.pt", "--threads", "0"], "0 is not in the range x>=1", 2),
    (compare_cli, ["--checkpoint", "b.pt", "--batch-size", "0"], "0 is not in the range x>=1", 2),
    (compare_cli, ["--checkpoint", "b.pt", "--episodes", "0"], "0 is not in the range x>=1", 2),
    (compare_cli, ["--checkpoint", "b.pt", "--bootstrap-seed", "-1"], "not in the range", 2),
])
def test_eval_numbers_out_of_range(tmp_path, monkeypatch, cli, args, fragment, code):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["--checkpoint", str(tmp_path / "a.pt"), *args])
    _refused(r, fragment, code=code)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("cli, args, fragment, code", [
    (masks_cli, ["--workers", "0"], "--workers must be an int >= 1, got 0", 1),
    (masks_cli, ["--shard-size", "0"], "--shard-size must be an int >= 1, got 0", 1),
    (episodes_cli, ["--dataset", "demo", "--min-pixels", "0"], "--min-pixels must be an int >= 1", 1),
    (prep_demo_cli, ["--n-train", "0"], "0 is not in the range x>=1", 2),
    (prep_demo_cli, ["--seed", "-1"], "-1 is not in the range x>=0", 2),
    (predict_cli, ["--model", "m", "--support", "s", "--support-mask", "m", "--out", "o",
                   "--batch-size", "0", "q.png"], "0 is not in the range x>=1", 2),
    (predict_cli, ["--model", "m", "--support", "s", "--support-mask", "m", "--out", "o",
                   "--threads", "0", "q.png"], "0 is not in the range x>=1", 2),
    (app_cli, ["--model", "m", "--port", "70000"], "70000 is not in the range 0<=x<=65535", 2),
    (demo_cli, ["--fss-steps", "0"], "0 is not in the range x>=1", 2),
    (demo_cli, ["--fold", "5"], "5 is not in the range 0<=x<=3", 2),
    (demo_cli, ["--episodes", "0"], "0 is not in the range x>=1", 2),
])
def test_prep_predict_app_demo_numbers_out_of_range(tmp_path, monkeypatch, cli, args, fragment,
                                                   code):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QGNET_CACHE_DIR", str(tmp_path / "cache"))
    _refused(CliRunner().invoke(cli, args), fragment, code=code)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_config_option_is_a_flag_of_its_command():
    """One line per option: the click options of qgnet-train are the config's fields, with
    the help, choices and flags the field declares (cli/_options.py)."""
    from model.fss.config import FssConfig
    from model.prior.config import PriorConfig
    from pipeline.settings import flag_of

    for cli, cls in ((fss_cli, FssConfig), (prior_cli, PriorConfig)):
        params = {p.name: p for p in cli.params}
        for f in dataclasses.fields(cls):
            assert f.name in params, f.name
            assert params[f.name].default is None  # "not given": the config's default applies
            assert flag_of(f) in params[f.name].opts and f.metadata.get("help"), f.name
