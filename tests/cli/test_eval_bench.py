"""qgnet-eval bench: one checkpoint on a folder dataset (its own, fold 0) and on Chest X-ray
(cross-domain, PATNet's protocol, HSNet's scoring), FSS-1000 absent; each row equal to
``qgnet-eval fss`` on the same checkpoint, episodes and scoring; resume after a kill; bad
options refused with nothing written; the evaluator's per-benchmark defaults."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.eval_bench import bench
from cli.eval_fss import fss as eval_fss
from cli.train_fss import fss as train_fss

QUICK = ["--workers", "0", "--threads", "1", "--device", "cpu", "--no-progress"]


def one_object(i, rng, side):
    """Each image one 46 x 46 object (usable: >= 2048 px) of class (i % 8) + 1: with 24 val
    images every class has 3 usable val images (2-shot possible, 3-shot not)."""
    mask = np.zeros((side, side), np.uint8)
    mask[1:47, 1:47] = i % 8 + 1
    mask[:, 0] = 255
    return mask


def write_chest(root):
    """The Kaggle Chest X-ray layout PATNet reads: CXR_png/NAME.png + masks/NAME_mask.png."""
    base = root / "LungSegmentation"
    (base / "CXR_png").mkdir(parents=True)
    (base / "masks").mkdir()
    rng = np.random.default_rng(3)
    for i, stem in enumerate(("CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0003_1", "CHNCXR_0010_1")):
        h, w = 18 + i, 16
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(
            base / "CXR_png" / f"{stem}.png")
        m = np.zeros((h, w), np.uint8)
        m[3:12, 2:10 + i] = 255
        Image.fromarray(m).save(base / "masks" / f"{stem}_mask.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory, toy_folder_writer):
    """A 2-step checkpoint trained on the toy (fold 0, 1-shot), the toy's and Chest X-ray's
    test mask stores in one cache; no FSS-1000."""
    from pipeline.episode_stage import build_episodes
    from pipeline.mask_stage import build_mask_store

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("bench")
    cache = str(base / "cache")
    toy = toy_folder_writer(base / "toy", n_train=16, n_val=24, size=48, draw=one_object)
    quiet = {"workers": 1, "scheduler": "sync", "progress": False}
    for split in ("train", "val"):
        build_mask_store("toy", split=split, cache_dir=cache, root=toy, **quiet)
    build_episodes("toy", cache_dir=cache, folds=[0], shots=[1], n_episodes=5, echo=lambda s: None)
    build_mask_store("chest", split="test", cache_dir=cache, root=write_chest(base / "cxr"), **quiet)
    run = base / "run"
    r = CliRunner().invoke(train_fss, [
        "--dataset", "toy", "--root", str(toy), "--cache-dir", cache, "--fold", "0",
        "--prior", "imagenet", "--crop", "33", "--batch-size", "2", "--epochs", "1",
        "--max-steps", "2", "--val-episodes", "2", "--out", str(run), *QUICK])
    assert r.exit_code == 0, r.output
    return {"base": base, "cache": cache, "ckpt": str(run / "best.pt"), "run": run}


def _bench(setup, out, *args, **kw):
    return CliRunner().invoke(bench, ["--checkpoint", setup["ckpt"], "--cache-dir", setup["cache"],
                                      "--out", str(out), *QUICK, *args], **kw)


@pytest.fixture(scope="module")
def table(setup):
    out = setup["base"] / "table"
    r = _bench(setup, out, "--benchmarks", "toy,chest,fss1000", "--shot", "1,2", "--episodes", "2")
    assert r.exit_code == 0, r.output
    return {"out": out, "output": r.output, "json": json.loads((out / "bench.json").read_text()),
            "md": (out / "bench.md").read_text()}


def _rows(data):
    return {f"{r['benchmark']}-{r['shot']}shot": r for r in data["rows"]}


def test_one_row_per_present_benchmark_and_shot_absent_ones_listed(table, setup):
    data, md = table["json"], table["md"]
    rows = _rows(data)
    assert list(rows) == ["toy-1shot", "toy-2shot", "chest-1shot", "chest-2shot"]
    assert data["pending"] == [] and data["not_run"] == []
    (absent,) = data["absent"]
    assert absent["benchmark"] == "fss1000" and "HKUSTCV/FSS-1000" in absent["where"]
    assert absent["commands"][0] == (f"qgnet-prep masks --dataset fss1000 --root DIR --split test "
                                     f"--cache-dir {setup['cache']}")
    assert "## Absent" in md and "HKUSTCV/FSS-1000" in md and "| toy (own) | 0 | 2 |" in md
    # the checkpoint's own dataset at its fold, PFENet's pass: both scorings of the pass
    toy = rows["toy-1shot"]
    assert (toy["fold"], toy["cross_domain"], toy["protocol"], toy["scoring"]) == (
        0, False, "pfenet", "pfenet")
    assert set(toy["scores"]) == {"pfenet", "exact"} and toy["seeds"] == [321]
    assert toy["input_size"] == 33 and toy["episodes"] == [2] and toy["episodes_in_file"] == [5]
    # the 2-shot file did not exist: made beside the 1-shot one (its classes, its count: 5)
    assert rows["toy-2shot"]["episodes_in_file"] == [5]
    # the cross-domain set: fold 0, its own protocol, seed and published scoring (HSNet's 400)
    for k in (1, 2):
        c = rows[f"chest-{k}shot"]
        assert (c["fold"], c["cross_domain"], c["protocol"], c["scoring"], c["scoring_from"]) == (
            0, True, "patnet", "hsnet", "benchmark")
        assert c["seeds"] == [0] and c["input_size"] == 400 and list(c["scores"]) == ["hsnet"]
        assert c["episodes_in_file"] == [600] and c["protocol_episodes"] == 600
    # capped runs say so, in the json and the table
    assert all(r["capped"] and r["episodes"] == [2] for r in rows.values())
    assert "2 of 600 (capped)" in md and "**Capped** with `--episodes 2`" in md
    assert all(r["episodes_per_s"] > 0 for r in rows.values())


def test_every_row_equals_qgnet_eval_fss(table, setup):
    """The oracle: the same numbers through ``qgnet-eval fss`` (the checkpoint reloaded,
    its defaults: no --scoring, --protocol or --seeds for the cross-domain set either)."""
    rows = _rows(table["json"])
    for key, extra in (("toy-2shot", ["--shot", "2"]),
                       ("chest-1shot", ["--dataset", "chest", "--shot", "1"])):
        out = setup["base"] / f"eval-{key}"
        r = CliRunner().invoke(eval_fss, ["--checkpoint", setup["ckpt"], "--cache-dir",
                                          setup["cache"], "--episodes", "2", "--out", str(out),
                                          *QUICK, *extra])
        assert r.exit_code == 0, r.output
        (res,) = json.loads((out / "results.json").read_text()).values()
        row = rows[key]
        assert (res["protocol"], res["scoring"], res["seeds"], res["input_size"]) == (
            row["protocol"], row["scoring"], row["seeds"], row["input_size"]), key
        assert set(res["scores"]) == set(row["scores"])
        for name, sc in res["scores"].items():
            assert row["scores"][name]["miou"] == sc["miou"]["mean"], (key, name)
            assert row["scores"][name]["fb_iou"] == sc["fb_iou"]["mean"], (key, name)


def test_eval_fss_defaults_to_the_benchmarks_protocol(setup, tmp_path):
    """A checkpoint trained on a benchmark with a published scoring other than PFENet's is
    scored like its tables without flags; --scoring overrides."""
    ck = torch.load(setup["ckpt"], map_location="cpu", weights_only=True)
    ck["config"] = {**ck["config"], "dataset": "chest", "root": None, "fold": 0}
    path = tmp_path / "chest.pt"
    torch.save(ck, path)
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(path), "--cache-dir", setup["cache"],
                                      "--episodes", "2", *QUICK])
    assert r.exit_code == 0, r.output
    (res,) = json.loads((tmp_path / "results.json").read_text()).values()
    assert (res["dataset"], res["protocol"], res["scoring"], res["seeds"], res["input_size"]) == (
        "chest", "patnet", "hsnet", [0], 400)
    assert res["benchmark_defaults"] == ["protocol", "scoring", "seeds"]
    r = CliRunner().invoke(eval_fss, ["--checkpoint", str(path), "--cache-dir", setup["cache"],
                                      "--episodes", "2", "--scoring", "exact", *QUICK])
    assert r.exit_code == 0, r.output
    entry = json.loads((tmp_path / "results.json").read_text())["fold0-1shot-patnet-2ep"]
    assert entry["scoring"] == "exact" and entry["benchmark_defaults"] == ["protocol", "seeds"]


def test_resume_skips_finished_rows_and_redoes_a_changed_one(table, setup, monkeypatch):
    import shutil

    import model.fss.evaluate as ev
    from pipeline.cache import episodes_dir

    out = setup["base"] / "resume"
    shutil.copytree(table["out"], out)
    calls, real = [], ev.evaluate

    def spy(*a, **kw):
        calls.append((kw["dataset"], kw["shot"]))
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate", spy)
    args = ("--benchmarks", "toy,chest,fss1000", "--shot", "1,2", "--episodes", "2")
    r = _bench(setup, out, *args)
    assert r.exit_code == 0, r.output
    assert calls == [] and "reusing 4 finished row(s)" in r.output
    assert _rows(json.loads((out / "bench.json").read_text())) == _rows(table["json"])
    # an input changed: chest's 1-shot episode file drawn again with other queries
    path = episodes_dir("chest", cache_dir=setup["cache"]) / "test-fold0-shot1-patnet-seed0.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    saved = path.read_bytes()
    arrays["query"] = arrays["query"][::-1].copy()
    np.savez(path, **arrays)
    try:
        r = _bench(setup, out, *args)
    finally:
        path.write_bytes(saved)
    assert r.exit_code == 0, r.output
    assert calls == [("chest", 1)] and "reusing 3 finished row(s)" in r.output
    # another cap is another input: every row again
    calls.clear()
    r = _bench(setup, out, "--benchmarks", "toy,chest", "--shot", "1", "--episodes", "1")
    assert r.exit_code == 0, r.output
    assert calls == [("toy", 1), ("chest", 1)]


def test_a_killed_run_resumes_with_the_rows_it_finished(setup, monkeypatch):
    import model.fss.evaluate as ev

    out = setup["base"] / "killed"
    calls, real = [], ev.evaluate

    def dies_on_the_second_row(*a, **kw):
        calls.append((kw["dataset"], kw["shot"]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process stops mid-run
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate", dies_on_the_second_row)
    args = ("--benchmarks", "toy,chest", "--shot", "1", "--episodes", "1")
    r = _bench(setup, out, *args)
    assert r.exit_code != 0
    data = json.loads((out / "bench.json").read_text())
    assert [row["benchmark"] for row in data["rows"]] == ["toy"] and data["pending"] == ["chest-1shot"]
    assert "**In progress**: 1 row(s) to go (chest-1shot)" in (out / "bench.md").read_text()
    calls.clear()
    monkeypatch.setattr(ev, "evaluate", lambda *a, **kw: calls.append(kw["dataset"]) or real(*a, **kw))
    r = _bench(setup, out, *args)
    assert r.exit_code == 0, r.output
    assert calls == ["chest"]
    data = json.loads((out / "bench.json").read_text())
    assert [row["benchmark"] for row in data["rows"]] == ["toy", "chest"] and not data["pending"]


def test_rows_that_cannot_be_drawn_are_listed_not_failed(setup):
    out = setup["base"] / "notrun"
    r = _bench(setup, out, "--benchmarks", "toy", "--shot", "3")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "bench.json").read_text())
    assert data["rows"] == [] and len(data["not_run"]) == 1
    assert data["not_run"][0]["benchmark"] == "toy" and "4 images" in data["not_run"][0]["reason"]
    assert "## Not run" in (out / "bench.md").read_text()


@pytest.mark.parametrize("args, env, message", [
    (["--episodes", "0"], {}, "--episodes must be an int >= 1, got 0"),
    (["--shot", "1,0"], {}, "--shot must be an int >= 1, got 0"),
    (["--workers", "-1"], {}, "--workers must be an int >= 0, got -1"),
    ([], {"QGNET_EPISODES": "x"}, "$QGNET_EPISODES must be an int"),
    (["--benchmarks", "fss100"], {}, "did you mean 'fss1000'"),
    (["--benchmarks", "../x"], {}, "--benchmarks"),
])
def test_bad_options_are_one_line_errors_with_nothing_written(setup, tmp_path, args, env, message):
    out = tmp_path / "out"
    r = _bench(setup, out, *args, env=env)
    assert r.exit_code == 1, r.output
    assert message in r.output and r.output.strip().count("\n") == 0, r.output
    assert not out.exists()


def test_bad_scoring_and_missing_checkpoint(setup, tmp_path):
    r = _bench(setup, tmp_path / "o", "--scoring", "bam")
    assert r.exit_code == 2 and "--scoring" in r.output
    r = CliRunner().invoke(bench, ["--checkpoint", str(tmp_path / "nope.pt"), "--out",
                                   str(tmp_path / "o")])
    assert r.exit_code == 1 and "nope.pt" in r.output and not (tmp_path / "o").exists()


def test_scoring_names_match_the_evaluators():
    from model.fss.bench import SCORING_CHOICES
    from model.fss.metrics import SCORINGS

    assert SCORING_CHOICES == tuple(SCORINGS)
