"""qgnet-eval compare on two tiny checkpoints: the evaluator's numbers, B - A with its interval,
exactly 0 for a model against itself, JSON with per-episode counts."""
import json

import pytest
from click.testing import CliRunner

from cli.eval_compare import compare
from cli.eval_fss import fss as eval_fss
from cli.train_fss import fss as train_fss
from model.fss.compare import compare_results, episode_metrics


@pytest.fixture(scope="module")
def two_runs(make_fss_toy):
    toy = make_fss_toy("compare", n_episodes=6)
    runs = {}
    for name, flags in (("baseline", ["--no-prior-map"]), ("qgnet", ["--prior", "imagenet"])):
        run = toy["base"] / name
        r = CliRunner().invoke(train_fss, [
            "--dataset", "folder", "--cache-dir", toy["cache"], "--fold", "0", *flags,
            "--crop", "33", "--batch-size", "2", "--epochs", "1", "--max-steps", "2",
            "--workers", "0", "--threads", "1", "--device", "cpu", "--val-episodes", "0",
            "--no-progress", "--out", str(run)])
        assert r.exit_code == 0, r.output
        runs[name] = run / "best.pt"
    return toy, runs


def test_compare_matches_the_evaluator_and_itself(two_runs):
    toy, runs = two_runs
    out = toy["base"] / "cmp.json"
    r = CliRunner().invoke(compare, ["--checkpoint", str(runs["baseline"]), "--checkpoint", str(runs["qgnet"]),
                                     "--workers", "0", "--device", "cpu", "--no-progress",
                                     "--resamples", "1000", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "paired bootstrap 95 % CI" in r.output and "mIoU" in r.output
    assert "scored with pfenet (PFENet test.py" in r.output
    res = json.loads(out.read_text())
    assert res["episodes"] == 6 and len(res["per_episode"]["conf_a"]) == 6
    assert res["scoring"] == "pfenet"
    lo, hi = res["diff"]["miou"]["ci95"]
    est = res["diff"]["miou"]["estimate"]
    assert lo <= est <= hi
    assert est == pytest.approx(res["b"]["miou"]["mean"] - res["a"]["miou"]["mean"], abs=1e-9)
    # the per-episode counts give back the evaluator's mIoU and FB-IoU
    for key, conf in (("a", "conf_a"), ("b", "conf_b")):
        m = episode_metrics(res["per_episode"]["cls"], res["per_episode"][conf])
        assert m["miou"] == pytest.approx(res[key]["miou"]["mean"], abs=1e-9)
        assert m["fb_iou"] == pytest.approx(res[key]["fb_iou"]["mean"], abs=1e-9)

    # each side's mIoU / FB-IoU is the one `qgnet-eval fss` reports for that checkpoint
    entries = {}
    for key, name in (("a", "baseline"), ("b", "qgnet")):
        r = CliRunner().invoke(eval_fss, ["--checkpoint", str(runs[name]), "--workers", "0",
                                          "--no-progress", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        (entry,) = json.loads((runs[name].parent / "results.json").read_text()).values()
        entries[key] = entry
        assert res[key]["miou"]["mean"] == pytest.approx(entry["miou"]["mean"], abs=1e-9)
        assert res[key]["fb_iou"]["mean"] == pytest.approx(entry["fb_iou"]["mean"], abs=1e-9)
    # the same two results paired under the other scoring of their pass, without rescoring
    exact = compare_results(entries["a"], entries["b"], scoring="exact", resamples=1000)
    assert exact["scoring"] == "exact"
    for key in "ab":
        assert exact[key]["miou"] == entries[key]["scores"]["exact"]["miou"]
        m = episode_metrics(exact["per_episode"]["cls"], exact["per_episode"][f"conf_{key}"])
        assert m["miou"] == pytest.approx(entries[key]["scores"]["exact"]["miou"]["mean"], abs=1e-9)
    with pytest.raises(ValueError, match="hsnet"):
        compare_results(entries["a"], entries["b"], scoring="hsnet")

    # a model against itself: exactly 0, interval [0, 0]
    r = CliRunner().invoke(compare, ["--checkpoint", str(runs["qgnet"]), "--checkpoint", str(runs["qgnet"]),
                                     "--workers", "0", "--device", "cpu", "--no-progress",
                                     "--episodes", "4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["episodes"] == 4
    assert res["diff"]["miou"]["estimate"] == 0.0 and res["diff"]["miou"]["ci95"] == [0.0, 0.0]


def test_compare_needs_two_checkpoints(two_runs):
    _, runs = two_runs
    r = CliRunner().invoke(compare, ["--checkpoint", str(runs["qgnet"])])
    assert r.exit_code == 2 and "exactly two" in r.output
    r = CliRunner().invoke(compare, ["--checkpoint", str(runs["qgnet"]), "--checkpoint",
                                     str(runs["qgnet"]), "--resamples", "10"])
    assert r.exit_code == 2 and "1000" in r.output


def test_missing_checkpoint_and_episodes_are_one_line_errors(two_runs, tmp_path):
    _, runs = two_runs
    r = CliRunner().invoke(compare, ["--checkpoint", str(tmp_path / "a.pt"), "--checkpoint",
                                     str(runs["qgnet"]), "--device", "cpu"])
    assert r.exit_code == 1 and "a.pt" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(compare, ["--checkpoint", str(runs["baseline"]), "--checkpoint",
                                     str(runs["qgnet"]), "--seed", "7", "--device", "cpu",
                                     "--workers", "0"])
    assert r.exit_code == 1 and "qgnet-prep episodes" in r.output, r.output


def test_checkpoints_of_other_shots_or_folds_are_refused(two_runs, tmp_path):
    """Issue 22 §4: a 2-shot checkpoint was silently scored on checkpoint A's 1-shot
    episodes beside it (different folds were already refused)."""
    import torch

    _, runs = two_runs
    ckpt = torch.load(runs["qgnet"], map_location="cpu", weights_only=True)
    for key, value in (("shot", 2), ("fold", 1)):
        other = tmp_path / f"{key}.pt"
        torch.save({**ckpt, "config": {**ckpt["config"], key: value}}, other)
        r = CliRunner().invoke(compare, ["--checkpoint", str(runs["baseline"]), "--checkpoint",
                                         str(other), "--device", "cpu", "--workers", "0"])
        line = r.output.strip()
        assert r.exit_code == 1 and "\n" not in line, r.output
        assert f"were trained with {key} {ckpt['config'][key]!r} and {value!r}" in line, line
        assert line.endswith("compare models of the same dataset, fold and shot"), line
