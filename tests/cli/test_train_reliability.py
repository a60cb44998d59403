"""Training commands facing bad input (issue 15 items 2, 6, 11): a pickled, random-bytes or
wrong-kind checkpoint, a resume that would change the run, options out of range, and a run
dir whose path needs quoting. Every failure is one line: ``Error: ...``."""
import shlex

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.eval_fss import fss as eval_fss
from cli.train_fss import fss as train_fss
from cli.train_prior import prior as train_prior


class Opaque:
    pass


@pytest.fixture(scope="module")
def toy(make_fss_toy):
    return make_fss_toy("trainrel", n_episodes=4)


@pytest.fixture(scope="module")
def run(toy):
    """One finished 1-step fss run, in a folder whose name needs shell quoting."""
    out = toy["base"] / "my runs" / "fold 0"
    r = CliRunner().invoke(train_fss, _train_args(toy, out, "--max-steps", "1"))
    assert r.exit_code == 0, r.output
    return out, r.output


def _train_args(toy, out, *extra):
    return ["--dataset", "folder", "--cache-dir", toy["cache"], "--no-prior-map", "--crop", "33",
            "--batch-size", "2", "--epochs", "1", "--workers", "0", "--threads", "1",
            "--device", "cpu", "--val-episodes", "0", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("badckpt")
    torch.save({"model": Opaque()}, d / "pickled.pt")
    (d / "random.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "step": 1, "config": {},
                "kind": "prior"}, d / "prior.pt")
    torch.save({"model": {}, "model_meta": {}, "step": 1, "config": {}, "kind": "fss"},
               d / "fss.pt")
    return d


def _one_line_error(r, path):
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0], r.output
    assert "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize("name", ["pickled.pt", "random.pt", "prior.pt"])
def test_bad_checkpoint_to_eval_and_fss_resume_and_prior(bad_files, tmp_path, name):
    path = bad_files / name
    line = _one_line_error(CliRunner().invoke(eval_fss, ["--checkpoint", str(path)]), path)
    assert "qgnet-train fss" in line
    line = _one_line_error(CliRunner().invoke(train_fss, ["--resume", str(path)]), path)
    assert "qgnet-train fss" in line
    line = _one_line_error(CliRunner().invoke(train_fss, [
        "--dataset", "folder", "--prior", str(path), "--cache-dir", str(tmp_path),
        "--out", str(tmp_path / "run")]), path)
    assert "prior_extractor.pt" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["pickled.pt", "random.pt", "fss.pt"])
def test_bad_checkpoint_to_prior_resume(bad_files, name):
    path = bad_files / name
    line = _one_line_error(CliRunner().invoke(train_prior, ["--resume", str(path)]), path)
    assert "qgnet-train prior" in line


def test_evaluate_line_is_shell_quoted(run):
    out, output = run
    line = next(ln for ln in output.splitlines() if ln.startswith("evaluate with: "))
    argv = shlex.split(line.removeprefix("evaluate with: "))
    assert argv == ["qgnet-eval", "fss", "--checkpoint", str(out / "best.pt")]


def test_resume_with_another_fold_is_refused_like_the_prior(run, toy):
    out, _ = run
    before = (out / "last.pt").read_bytes()
    r = CliRunner().invoke(train_fss, ["--resume", str(out), "--fold", "1", "--crop", "97"])
    line = _one_line_error(r, "")
    assert line.startswith("Error: cannot resume: the checkpoint was trained with other options")
    assert "fold: checkpoint 0, now 1" in line and "crop: checkpoint 33, now 97" in line
    assert (out / "last.pt").read_bytes() == before
    # resumable options pass: a longer run on one worker
    r = CliRunner().invoke(train_fss, ["--resume", str(out), "--max-steps", "2", "--workers", "0",
                                       "--fold", "0"])
    assert r.exit_code == 0, r.output
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "Error: --threads must be an int >= 1, got 0\n"),
    (["--shot", "0"], "Error: --shot (support images per episode) must be an int >= 1, got 0\n"),
    (["--crop", "8"], "Error: --crop (crop side in pixels) must be an int >= 9, got 8\n"),
    (["--fold", "7"], "--fold 7: the dataset folder has folds 0-3"),
])
def test_bad_options_name_the_option(toy, tmp_path, args, message):
    out = tmp_path / "run"
    r = CliRunner().invoke(train_fss, _train_args(toy, out, *args))
    assert r.exit_code != 0 and message in r.output, r.output
    assert "bad options" not in r.output and "qgnet-prep episodes" not in r.output
    assert not out.exists()
