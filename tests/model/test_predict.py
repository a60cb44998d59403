"""qgnet-export / qgnet-predict / model.predict.Segmenter on the toy few-shot dataset.

The oracle: for a query and support taken from an episode file, the Segmenter's mask is
exactly the mask ``qgnet-eval fss`` scored (same transform, network and score-back path).
"""
import csv
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.export import main as export_cli
from cli.predict import main as predict_cli
from cli.train_fss import fss as train_fss


@pytest.fixture(scope="module")
def trained(make_fss_toy):
    toy = make_fss_toy("predict", n_episodes=6)
    run = toy["base"] / "run"
    r = CliRunner().invoke(train_fss, [
        "--dataset", "folder", "--cache-dir", toy["cache"], "--fold", "0", "--prior", "imagenet",
        "--crop", "33", "--batch-size", "2", "--epochs", "1", "--max-steps", "2",
        "--workers", "0", "--threads", "1", "--device", "cpu", "--val-episodes", "2",
        "--no-progress", "--out", str(run)])
    assert r.exit_code == 0, r.output
    # two training steps predict 'everything is the object'; random final-classifier weights
    # make the masks depend on the pixels, so that equal masks below mean something
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    last = sorted(k for k in ckpt["model"] if k.startswith("cls.") and k.endswith("weight"))[-1]
    g = torch.Generator().manual_seed(0)
    ckpt["model"][last] = torch.randn(ckpt["model"][last].shape, generator=g) * 0.5
    torch.save(ckpt, run / "varied.pt")
    # and a foreground bias at the median logit gap of the first test episode, so that about
    # half of its pixels are the object whatever the two training steps learnt
    from model.fss.build import load_model, step
    from model.fss.data import TestEpisodes, collate
    from pipeline.episode_stage import load_test_episodes

    model, _ = load_model(run / "varied.pt")
    ep = load_test_episodes("folder", 0, 1, seed=321, cache_dir=toy["cache"])
    ds = TestEpisodes(ep, crop=33, dataset="folder", root=toy["root"], cache_dir=toy["cache"])
    with torch.no_grad():
        logits = step(model, collate([ds[0]]), device=torch.device("cpu"), amp=False)["out"]["logits"]
    bias = last[:-len("weight")] + "bias"
    ckpt["model"][bias][1] -= float((logits[0, 1] - logits[0, 0]).median())
    torch.save(ckpt, run / "varied.pt")
    bundle = toy["base"] / "model.qgnet"
    r = CliRunner().invoke(export_cli, ["--checkpoint", str(run / "varied.pt"), "--out", str(bundle)])
    assert r.exit_code == 0, r.output
    return {**toy, "ckpt": run / "varied.pt", "bundle": bundle}


def _episode_images(toy, ep, e):
    from model.fss.data import TestEpisodes

    ds = TestEpisodes(ep, crop=33, dataset="folder", root=toy["root"], cache_dir=toy["cache"])
    c = int(ds.cls[e])
    q_img, q_lab = ds.load(int(ds.query[e]), c)
    sup = [ds.load(int(s), c) for s in ds.support[e]]
    return q_img, q_lab, [s[0] for s in sup], [s[1] for s in sup]


def test_predict_gives_exactly_the_mask_the_evaluator_scored(trained, monkeypatch):
    import model.fss.metrics as metrics
    from model.fss.evaluate import evaluate
    from model.predict import Segmenter
    from pipeline.episode_stage import load_test_episodes

    scored = []  # every prediction the evaluator's exact scoring (episode_confusions) computes
    original = metrics.upsample_logits

    def spy(*args, **kwargs):
        pred = original(*args, **kwargs)
        if kwargs.get("protocol", "exact") == "exact":  # the same pass also scores "pfenet"
            scored.append(pred.cpu().numpy().copy())
        return pred

    monkeypatch.setattr(metrics, "upsample_logits", spy)
    ep = load_test_episodes("folder", 0, 1, seed=321, cache_dir=trained["cache"])
    evaluate(str(trained["ckpt"]), ep, device="cpu", workers=0, progress=False, write=False,
             batch_size=1)
    monkeypatch.undo()
    assert len(scored) == 6
    fg = [float(np.mean(p)) for p in scored]
    assert all(0 < f < 1 for f in fg), fg  # not a constant prediction: equality means something
    for path in (trained["ckpt"], trained["bundle"]):
        seg = Segmenter.load(path, device="cpu")
        for e in range(6):
            q, q_lab, s_imgs, s_labs = _episode_images(trained, ep, e)
            (mask,) = seg.predict([q], s_imgs, s_labs, mask_value=1, batch_size=1)
            assert mask.shape == q_lab.shape and mask.dtype == bool
            np.testing.assert_array_equal(mask, scored[e].astype(bool))


def test_bundle_needs_no_weight_files_and_rejects_foreign_files(trained, tmp_path, monkeypatch):
    import model.backbones as backbones
    from model.predict import Segmenter, load_network
    from pipeline.errors import CheckpointError

    real = backbones.build_backbone

    def only_random_init(name, *, weights, **kw):
        assert weights == "none", f"the bundle must not read {weights}"
        return real(name, weights=weights, **kw)

    monkeypatch.setattr(backbones, "build_backbone", only_random_init)
    model, meta = load_network(trained["bundle"])
    assert meta["crop"] == 33 and not model.training
    monkeypatch.undo()
    ref, _ = load_network(trained["ckpt"])
    for k, v in ref.state_dict().items():  # every weight, frozen backbones included
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)

    junk = tmp_path / "junk.qgnet"
    junk.write_bytes(os.urandom(4096))
    torch.save({"backbone": {}, "backbone_name": "resnet50"}, tmp_path / "prior.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for bad, words in ((junk, "not a readable model file"), (tmp_path / "prior.pt", "neither"),
                       (tmp_path / "list.pt", "not a qgnet model"),
                       (tmp_path / "missing.qgnet", "no such model file")):
        with pytest.raises(CheckpointError, match=words):
            Segmenter.load(bad)


def _write_support(tmp_path, trained):
    from pipeline.episode_stage import load_test_episodes

    ep = load_test_episodes("folder", 0, 1, seed=321, cache_dir=trained["cache"])
    q, _, s_imgs, s_labs = _episode_images(trained, ep, 0)
    Image.fromarray(s_imgs[0]).save(tmp_path / "s.png")
    Image.fromarray((s_labs[0] == 1).astype(np.uint8) * 7).save(tmp_path / "s_mask.png")
    qdir = tmp_path / "queries"
    qdir.mkdir()
    Image.fromarray(q).save(qdir / "q1.png")
    Image.fromarray(q[:50, :70]).save(qdir / "q2.jpg")  # another size
    return qdir


def test_cli_writes_masks_overlays_and_summary(trained, tmp_path):
    qdir = _write_support(tmp_path, trained)
    out = tmp_path / "preds"
    r = CliRunner().invoke(predict_cli, [
        "--model", str(trained["bundle"]), "--support", str(tmp_path / "s.png"),
        "--support-mask", str(tmp_path / "s_mask.png"), "--support", str(tmp_path / "s.png"),
        "--support-mask", str(tmp_path / "s_mask.png"), "--out", str(out), "--overlay",
        "--device", "cpu", "--no-progress", str(qdir)])
    assert r.exit_code == 0, r.output
    m1 = np.asarray(Image.open(out / "q1.png"))
    m2 = np.asarray(Image.open(out / "q2.png"))
    assert m1.shape == (80, 80) and m2.shape == (50, 70)
    assert set(np.unique(m1)) <= {0, 255}
    assert Image.open(out / "q2.overlay.jpg").size == (70, 50)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert abs(float(rows[0]["foreground_fraction"]) - (m1 == 255).mean()) < 1e-6


def test_bad_inputs_are_one_line_messages_naming_the_file(trained, tmp_path):
    qdir = _write_support(tmp_path, trained)
    s, sm = str(tmp_path / "s.png"), str(tmp_path / "s_mask.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.zeros((40, 80), np.uint8) + 1).save(tmp_path / "small.png")
    rgb = np.zeros((80, 80, 3), np.uint8)
    rgb[10:40, 10:40] = (200, 10, 10)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    (tmp_path / "noimages").mkdir()
    (tmp_path / "noimages" / "notes.txt").write_text("x")
    (tmp_path / "junk.pt").write_bytes(b"not a model")

    def run(*args, model=str(trained["bundle"])):
        return CliRunner().invoke(predict_cli, ["--model", model, "--out", str(tmp_path / "o"),
                                                "--device", "cpu", "--no-progress", *args])

    cases = [
        (run("--support", s, "--support-mask", str(tmp_path / "empty.png"), str(qdir)),
         ["empty.png", "no non-zero pixel"]),
        (run("--support", s, "--support-mask", str(tmp_path / "small.png"), str(qdir)),
         ["small.png", "must match"]),
        (run("--support", s, "--support-mask", str(tmp_path / "rgb.png"), str(qdir)),
         ["rgb.png", "RGB"]),
        (run("--support", s, "--support-mask", sm, str(tmp_path / "noimages")),
         ["noimages", "no images"]),
        (run("--support", s, "--support-mask", sm, str(qdir), model=str(tmp_path / "junk.pt")),
         ["junk.pt", "not a readable model file"]),
        (run("--support", s, "--support-mask", sm, "--mask-value", "3", str(qdir)),
         ["s_mask.png", "no pixel of value 3"]),
        (run("--support", s, "--support", s, "--support-mask", sm, str(qdir)),
         ["2 --support but 1 --support-mask"]),
    ]
    for r, words in cases:
        assert r.exit_code == 1, r.output
        line = r.output.strip()
        assert line.startswith("Error:") and "\n" not in line and "Traceback" not in line, line
        for w in words:
            assert w in line, (w, line)

    # a truncated query is skipped, listed, and the exit code says so
    data = (qdir / "q2.jpg").read_bytes()
    (qdir / "q2.jpg").write_bytes(data[: len(data) // 3])
    r = run("--support", s, "--support-mask", sm, str(qdir))
    assert r.exit_code == 3, r.output
    rows = {row["query"]: row for row in csv.DictReader(open(tmp_path / "o" / "summary.csv"))}
    assert rows[str(qdir / "q1.png")]["status"] == "ok"
    assert rows[str(qdir / "q2.jpg")]["status"].startswith("skipped")
    assert (tmp_path / "o" / "q1.png").is_file() and not (tmp_path / "o" / "q2.png").exists()


def test_support_label_rules():
    from model.predict import support_label
    from pipeline.errors import ConfigError

    m = np.array([[0, 3, 5], [255, 3, 0]], np.uint8)
    assert support_label(m).tolist() == [[0, 1, 1], [255, 1, 0]]
    assert support_label(m, mask_value=5).tolist() == [[0, 0, 1], [255, 0, 0]]
    grey = np.repeat(m[..., None], 3, axis=2)  # an RGB file holding a grey mask is fine
    assert support_label(grey).tolist() == support_label(m).tolist()
    # a 0/255 mask (what qgnet-predict writes): 255 is the object, not "ignore"
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    assert support_label(binary).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ConfigError, match="no non-zero"):
        support_label(np.zeros((4, 4), np.uint8))


def test_app_request_without_a_browser(trained, tmp_path):
    """The page's POST handled in-process: overlays and masks at each query's size."""
    import base64
    import io

    from cli.app import encode_png, handle_predict
    from model.predict import Segmenter
    from pipeline.errors import ConfigError

    qdir = _write_support(tmp_path, trained)
    seg = Segmenter.load(trained["bundle"], device="cpu")
    support = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    painted = np.zeros(support.shape[:2] + (4,), np.uint8)
    painted[..., 3] = (np.asarray(Image.open(tmp_path / "s_mask.png")) > 0) * 140
    q2 = np.asarray(Image.open(qdir / "q2.jpg").convert("RGB"))
    body = {"support": encode_png(support), "support_mask": encode_png(painted),
            "mask_kind": "paint",
            "queries": [{"name": "q2.jpg", "data": encode_png(q2)},
                        {"name": "bad.jpg", "data": "data:image/jpeg;base64,AAAA"}]}
    res = handle_predict(seg, body)
    ok, bad = res["results"]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(ok["mask"].split(",")[1]))))
    assert mask.shape == q2.shape[:2] and ok["mask_name"] == "q2.png"
    (ref,) = seg.predict([q2], [support], [painted[..., 3]])
    np.testing.assert_array_equal(mask > 0, ref)  # the page's answer is the API's answer
    assert "cannot read the image" in bad["error"]
    with pytest.raises(ConfigError, match="no non-zero"):
        handle_predict(seg, {**body, "support_mask": encode_png(np.zeros_like(painted))})


def _chromium():
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_app_page_in_a_real_browser(trained, tmp_path):
    """Load the page in headless Chromium, paint the object, segment two queries, see the
    overlays and a download link. Skips where no browser or playwright is installed."""
    import threading

    pw = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tests only)")
    if not _chromium():
        pytest.skip("no Chromium: apt-get install chromium to run the browser test")
    from cli.app import make_server
    from model.predict import Segmenter

    qdir = _write_support(tmp_path, trained)
    server = make_server(Segmenter.load(trained["bundle"], device="cpu"), "model.qgnet", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent === 'model.qgnet'")
            page.set_input_files("#support", str(tmp_path / "s.png"))
            page.wait_for_function("document.getElementById('paint').width === 80")
            page.click("#run")  # nothing painted yet: the page says what to do
            assert "paint the object" in page.text_content("#status")
            box = page.locator("#paint").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=5)
            page.mouse.up()
            page.set_input_files("#queries", [str(qdir / "q1.png"), str(qdir / "q2.jpg")])
            page.click("#run")
            page.wait_for_selector("#results figure:nth-child(2) img.overlay", timeout=60_000)
            assert page.locator("a.download").count() == 2
            assert page.get_attribute("a.download >> nth=1", "download") == "q2.png"
            assert page.text_content("#status").startswith("done: 2 image(s)")
            shot = os.environ.get("QGNET_APP_SCREENSHOT") or str(tmp_path / "app.png")
            page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


def test_docs_example_runs(trained, tmp_path, monkeypatch):
    """The Python example of docs/predict.md, executed as written."""
    import re
    import shutil
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "predict.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "Segmenter" in b]
    qdir = _write_support(tmp_path, trained)
    shutil.copy(trained["bundle"], tmp_path / "model.qgnet")
    shutil.copy(tmp_path / "s.png", tmp_path / "support.png")
    shutil.copy(tmp_path / "s_mask.png", tmp_path / "support_mask.png")
    shutil.copy(qdir / "q2.jpg", tmp_path / "query.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "docs/predict.md", "exec"), scope)
    assert scope["masks"][0].shape == (50, 70)


# ---------------------------------------------------------------------------- issue 22
def test_predict_never_writes_over_an_input(trained, tmp_path):
    """``--out photos/ photos/q1.png`` replaced the photo with its mask (rc 0)."""
    qdir = _write_support(tmp_path, trained)
    s, sm = str(tmp_path / "s.png"), str(tmp_path / "s_mask.png")
    (qdir / "link.png").symlink_to(qdir / "q1.png")
    before = {p.name: p.read_bytes() for p in [*qdir.iterdir(), tmp_path / "s_mask.png"]}

    def run(out, *queries, extra=()):
        return CliRunner().invoke(predict_cli, [
            "--model", str(trained["bundle"]), "--support", s, "--support-mask", sm,
            "--out", str(out), "--device", "cpu", "--no-progress", *extra, *map(str, queries)])

    cases = [
        (run(qdir, qdir / "q1.png"), "writing q1.png would overwrite the input"),
        (run(f"{qdir}/../{qdir.name}", qdir), "would overwrite the input"),  # same folder, other spelling
        (run(tmp_path, tmp_path / "s_mask.png"), "would overwrite the input"),  # the support mask
        (run(qdir, tmp_path / "s.png"), None),  # s.png -> qdir/s.png: no input there
    ]
    (qdir / "s.png").unlink()
    for r, words in cases[:3]:
        assert r.exit_code == 1, r.output
        line = r.output.strip()
        assert line.startswith("Error: --out") and "\n" not in line and words in line, line
    assert {p.name: p.read_bytes() for p in [*qdir.iterdir(), tmp_path / "s_mask.png"]
            if p.name in before} == before  # no input touched
    # a link in --out that points at a query counts as that query
    r = run(tmp_path / "other", qdir / "link.png")
    assert r.exit_code == 0, r.output
    out = tmp_path / "o2"
    out.mkdir()
    (out / "q1.png").symlink_to(qdir / "q1.png")
    r = run(out, qdir / "q1.png")
    assert r.exit_code == 1 and "would overwrite the input" in r.output, r.output
    assert (qdir / "q1.png").read_bytes() == before["q1.png"]


def test_export_on_a_full_disk_or_read_only_folder_is_one_line(trained, tmp_path, file_size_limit,
                                                              read_only_dir):
    """Disk full left ``*.qgnet.tmp`` and a traceback; a read-only --out a traceback."""
    bundle = tmp_path / "m.qgnet"
    r = CliRunner().invoke(export_cli, ["--checkpoint", str(trained["ckpt"]), "--out", str(bundle)])
    assert r.exit_code == 0, r.output
    before = bundle.read_bytes()
    with file_size_limit(2**20):
        r = CliRunner().invoke(export_cli, ["--checkpoint", str(trained["ckpt"]),
                                            "--out", str(bundle)])
    assert r.exit_code == 1, r.output
    assert r.output.strip() == f"Error: {bundle}: File too large; the previous file is unchanged"
    assert bundle.read_bytes() == before and [p.name for p in tmp_path.iterdir()
                                              if p.name.startswith("m.qgnet")] == ["m.qgnet"]
    r = CliRunner().invoke(export_cli, ["--checkpoint", str(trained["ckpt"]),
                                        "--out", str(read_only_dir / "m.qgnet")])
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert line.startswith(f"Error: {read_only_dir / 'm.qgnet'}: ") and "\n" not in line, line
    assert "nothing was written" in line and list(read_only_dir.iterdir()) == []
    r = CliRunner().invoke(export_cli, ["--checkpoint", str(trained["ckpt"]),
                                        "--out", str(trained["ckpt"])])
    assert r.exit_code == 1 and "is the checkpoint itself" in r.output, r.output


def test_damaged_bundles_are_one_line_errors(trained, tmp_path):
    """An empty / invalid model_meta or no state_dict: KeyError, ValueError or TypeError
    tracebacks in qgnet-predict before."""
    good = torch.load(trained["bundle"], map_location="cpu", weights_only=True)
    meta = good["model_meta"]
    bad = {
        "empty-meta": ({**good, "model_meta": {}}, "model_meta (the network description) is empty"),
        "list-meta": ({**good, "model_meta": [1, 2]}, "is a list"),
        "no-crop": ({**good, "model_meta": {k: v for k, v in meta.items() if k != "crop"}},
                    "model_meta lacks crop"),
        "backbone": ({**good, "model_meta": {**meta, "backbone": "resnet9"}}, "unknown backbone"),
        "crop": ({**good, "model_meta": {**meta, "crop": "abc"}}, "does not describe a network"),
        "no-state": ({k: v for k, v in good.items() if k != "state_dict"}, "holds no state_dict"),
        "list-state": ({**good, "state_dict": [1]}, "a list as state_dict"),
        "half-state": ({**good, "state_dict": dict(list(good["state_dict"].items())[:3])},
                       "weights do not fit"),
    }
    qdir = _write_support(tmp_path, trained)
    for name, (obj, words) in bad.items():
        path = tmp_path / f"{name}.qgnet"
        torch.save(obj, path)
        r = CliRunner().invoke(predict_cli, [
            "--model", str(path), "--support", str(tmp_path / "s.png"), "--support-mask",
            str(tmp_path / "s_mask.png"), "--out", str(tmp_path / "o"), "--device", "cpu",
            "--no-progress", str(qdir)])
        line = r.output.strip()
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (name, r.exception)
        assert line.startswith(f"Error: {path}: ") and "\n" not in line, (name, line)
        assert words in line and "re-export it: qgnet-export --checkpoint" in line, (name, line)
