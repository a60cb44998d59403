"""``qgnet-prep superpixels | masks | info`` through click's CliRunner on a tiny folder dataset."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.prep import main
from pipeline.store import ShardedStore

N = 8


@pytest.fixture
def folder(tmp_path) -> Path:
    """Folder layout (images/, masks/, classes.txt, train.txt, val.txt), 64x48 PNGs; img003
    is a truncated JPEG."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    rng = np.random.default_rng(0)
    for i in range(N):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, 32:] = rng.integers(0, 256, 3)
        img[24:] += rng.integers(0, 100, 3).astype(np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        mask[:, 32:] = 1 + i % 2
        mask[:2] = 255
        Image.fromarray(mask).save(root / "masks" / f"img{i:03d}.png")
        if i == 3:
            path = root / "images" / f"img{i:03d}.jpg"
            Image.fromarray(img).save(path, quality=90)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 4 // 5])
        else:
            Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
    (root / "train.txt").write_text("".join(f"img{i:03d}\n" for i in range(N)))
    (root / "val.txt").write_text("img000\n")
    return root


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def base(folder, tmp_path, *more):
    return ("--dataset", "folder", "--root", folder, "--cache-dir", tmp_path / "cache",
            "--shard-size", 4, "--no-progress", *more)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom cli.prep import main\n"
            "for args in (['--help'], ['superpixels', '--help'], ['masks', '--help'], "
            "['info', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert e.code == 0\n"
            "bad = [m for m in ('torch', 'zarr', 'numba', 'dask') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--n-segments" in proc.stdout and "--scheduler" in proc.stdout


def test_superpixels_end_to_end(folder, tmp_path):
    code, out = run("superpixels", "--method", "slic", "--n-segments", 12, "--backend", "numba",
                    *base(folder, tmp_path, "--max-failures", 1))
    assert code == 0, out
    assert "computed 8 images" in out and "images/s" in out and "bytes per image" in out
    assert "failed: img003" in out
    path = Path(out.split("store: ")[1].split("\n")[0])
    store = ShardedStore.open(path, kind="superpixels")
    assert path.parent == tmp_path / "cache" / "folder" / "superpixels"
    assert store.complete and store.n == N and store.attrs["backend"] == "numba"
    assert store.attrs["params"]["n_segments"] == 12 and store.attrs["versions"]["zarr"]
    assert int((store.hw[:, 0] > 0).sum()) == N - 1 and store.get(0).min() >= 1

    # complete: nothing to do, exit 0 (the failure is allowed by --max-failures 1)
    code, out = run("superpixels", "--n-segments", 12, "--backend", "numba",
                    *base(folder, tmp_path, "--max-failures", 1))
    assert code == 0 and "nothing to do" in out, out
    # ... but not with the default --max-failures 0
    code, out = run("superpixels", "--n-segments", 12, "--backend", "numba",
                    *base(folder, tmp_path))
    assert code == 1 and "1 image(s) failed, more than --max-failures 0" in out

    # info on the store: params, counts, failures with reasons, size
    code, out = run("info", path)
    assert code == 0, out
    assert '"n_segments": 12' in out and "8 (7 written, 1 failed)" in out
    assert "img003: ImageReadError" in out and "per image" in out and "shards:     2/2" in out


def test_corrupt_image_fails_the_run(folder, tmp_path):
    code, out = run("superpixels", "--method", "felzenszwalb", "--scale", 50, "--min-size", 10,
                    *base(folder, tmp_path))
    assert code == 1
    assert "failed: img003" in out and "more than --max-failures 0" in out
    assert "the store is complete" in out


def test_limit_overwrite_and_config_file(folder, tmp_path):
    cfg = tmp_path / "prep.toml"
    cfg.write_text("[superpixels]\nn_segments = 9\nbackend = 'skimage'\nlimit = 3\n")
    code, out = run("superpixels", "--config", cfg, *base(folder, tmp_path))
    assert code == 0, out
    path = Path(out.split("store: ")[1].split("\n")[0])
    store = ShardedStore.open(path)
    assert store.n == 3 and store.attrs["params"] == {
        "n_segments": 9, "compactness": 10.0, "max_iter": 10, "backend": "skimage", "limit": 3}
    # flags win over the file; --out + other params at the same path is refused
    code, out = run("superpixels", "--config", cfg, "--n-segments", 10, "--out", path,
                    *base(folder, tmp_path))
    assert code == 1 and "other settings" in out and "n_segments" in out
    code, out = run("superpixels", "--config", cfg, "--n-segments", 10, "--out", path,
                    "--overwrite", *base(folder, tmp_path))
    assert code == 0 and "computed 3 images" in out, out
    assert ShardedStore.open(path).attrs["params"]["n_segments"] == 10


@pytest.mark.parametrize("args, match", [
    (("--n-segments", -3), "--n-segments must be an integer >= 1"),
    (("--method", "slic", "--scale", 3), "--scale do(es) not apply to slic"),
    (("--workers", 0), "Error: --workers must be an int >= 1, got 0\n"),
    (("--shard-size", 0), "Error: --shard-size must be an int >= 1, got 0\n"),
    (("--limit", 0), "Error: --limit must be an int >= 1, got 0\n"),
    (("--max-failures", -1), "Error: --max-failures must be an int >= 0, got -1\n"),
    (("--scheduler", "mpi"), "unknown scheduler"),
    (("--dataset", "no/pe"), "--dataset must be a name made of letters"),
    (("--dataset", "../../x"), "--dataset must be a name made of letters"),
])
def test_bad_options_are_clear_errors(folder, tmp_path, args, match):
    code, out = run("superpixels", *base(folder, tmp_path), *args)
    assert code == 1 and match in out, out


def test_unknown_method_is_a_usage_error(folder, tmp_path):
    code, out = run("superpixels", "--method", "watershed", *base(folder, tmp_path))
    assert code == 2 and "watershed" in out


def test_masks_and_info(folder, tmp_path):
    code, out = run("masks", *base(folder, tmp_path, "--max-failures", 1))
    assert code == 0, out
    path = tmp_path / "cache" / "folder" / "masks" / "train.zarr"
    store = ShardedStore.open(path, kind="masks")
    cp = store.extra("class_pixels")
    assert cp.shape == (N, 3) and cp[0].tolist() == [30 * 46 * 0 + 32 * 46, 32 * 46, 0]
    code, out = run("info", path)
    assert code == 0 and "images with >= 2048 px of each class" in out
    assert "cat" in out and "dog" in out
    # a cache folder: one line per store
    code, out = run("info", tmp_path / "cache")
    assert code == 0 and "masks folder/train" in out


def test_info_on_episodes_folder(tmp_path):
    ep = tmp_path / "episodes"
    ep.mkdir()
    (ep / "folds.json").write_text(json.dumps({"dataset": "toy", "folds": []}))
    np.savez(ep / "test-fold0-shot1-pfenet-seed321.npz", query=np.arange(5),
             support=np.zeros((5, 1), np.int64))
    code, out = run("info", ep)
    assert code == 0, out
    assert "test-fold0-shot1-pfenet-seed321.npz" in out and "support int64[5, 1]" in out
    (tmp_path / "empty").mkdir()
    code, out = run("info", tmp_path / "empty")
    assert code == 1 and "holds no qgnet store" in out


# ------------------------------------------------------------------ issue 15 (prep side)
def test_toml_and_env_values_are_typed_and_checked(folder, tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('[masks]\nworkers = "two"\n')
    code, out = run("masks", "--config", bad, *base(folder, tmp_path))
    assert code == 1 and out == f"Error: {bad}: workers must be an int, got 'two'\n"
    broken = tmp_path / "broken.toml"
    broken.write_text("[masks\nworkers = 2\n")
    code, out = run("masks", "--config", broken, *base(folder, tmp_path))
    assert code == 1 and f"config file {broken} is not valid TOML" in out
    assert len(out.splitlines()) == 1
    # QGNET_SHARD_SIZE=3 arrives as the int 3 (it was the string '3')
    monkeypatch.setenv("QGNET_SHARD_SIZE", "3")
    code, out = run("masks", "--dataset", "folder", "--root", folder, "--cache-dir",
                    tmp_path / "cache", "--no-progress", "--max-failures", 1)
    assert code == 0, out
    assert ShardedStore.open(tmp_path / "cache/folder/masks/train.zarr").shard_size == 3
    monkeypatch.setenv("QGNET_SHARD_SIZE", "0")
    code, out = run("masks", "--split", "val", "--dataset", "folder", "--root", folder,
                    "--cache-dir", tmp_path / "cache", "--no-progress")
    assert code == 1 and out == "Error: $QGNET_SHARD_SIZE must be an int >= 1, got 0\n"


def test_read_only_cache_is_one_line(folder, tmp_path, monkeypatch):
    """A read-only cache dir: one line naming the path (simulated: the tests run as root)."""
    import errno
    import os as os_mod

    cache = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *a, **k):
        if str(self).startswith(str(cache)):
            raise OSError(errno.EROFS, os_mod.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    for args in (("masks", "--dataset", "folder", "--root", folder),
                 ("superpixels", "--dataset", "folder", "--root", folder),
                 ("demo", "--n-train", 2, "--n-val", 1)):
        code, out = run(*args, "--cache-dir", cache)
        assert code == 1 and out.startswith("Error: ") and "Read-only file system" in out, out
        assert len(out.splitlines()) == 1 and str(cache) in out


def test_masks_verify_that_images_decode_and_info_lists_all_failures(folder, tmp_path):
    """The truncated JPEG img003 has a readable header; masks used to pass it."""
    for i in (5, 6, 7):  # more failures than the 5 a summary shows
        p = folder / "images" / f"img{i:03d}.png"
        p.write_bytes(p.read_bytes()[:60])
    code, out = run("masks", *base(folder, tmp_path))
    assert code == 1 and "failed: img003" in out and "4 image(s) failed" in out
    path = tmp_path / "cache" / "folder" / "masks" / "train.zarr"
    code, out = run("info", "--failures", path)
    assert code == 0
    assert [ln.split(":")[0].strip() for ln in out.splitlines() if ln.startswith("  img")] == \
        ["img003", "img005", "img006", "img007"]


def test_info_on_an_interrupted_store_counts_finished_shards_only(folder, tmp_path):
    code, out = run("superpixels", "--method", "felzenszwalb", "--scale", 50, "--min-size", 10,
                    *base(folder, tmp_path, "--max-failures", 1))
    assert code == 0, out
    path = Path(out.split("store: ")[1].split("\n")[0])
    store = ShardedStore.open(path, mode="r+")
    store._group["done"][1] = False  # as if killed before shard 1 (images 4..7) finished
    code, out = run("info", path)
    assert code == 0
    assert "images:     8 (3 written, 1 failed, 4 not computed yet)" in out, out
    assert "shards:     1/2 done" in out


def test_stale_demo_temporary_of_a_killed_run_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / "demo" / f"data.tmp{dead}"
    (stale / "images").mkdir(parents=True)
    code, out = run("demo", "--cache-dir", tmp_path, "--n-train", 3, "--n-val", 2)
    assert code == 0, out
    assert not stale.exists() and (tmp_path / "demo" / "data" / "DONE").is_file()


def test_info_reads_every_chunk_and_names_damaged_files(folder, tmp_path, monkeypatch):
    """Issue 22 §4: a corrupt zarr.json / ids.json was a JSONDecodeError traceback in ``info``
    and ``masks``; a corrupt chunk was reported as fine."""
    argv = ["masks", *map(str, base(folder, tmp_path, "--max-failures", 1))]
    monkeypatch.setattr(sys, "argv", ["qgnet-prep", *argv])  # what the store records
    code, out = run(*argv)
    assert code == 0, out
    path = tmp_path / "cache" / "folder" / "masks" / "train.zarr"
    code, out = run("info", path)
    assert code == 0 and "verified:   every chunk read back (2 shards of 4 arrays)" in out, out
    chunk = path / "masks" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[10:40] = b"x" * 30
    chunk.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 1, r.output
    assert "DAMAGED:    1 file(s) cannot be read; rebuild it: qgnet-prep masks" in r.output
    assert f"  {chunk} (images 4..7): RuntimeError: Zstd" in r.output
    assert r.output.rstrip().splitlines()[-1] == f"Error: 1 damaged file in {path} (listed above)"
    r = CliRunner().invoke(main, ["info", "--no-verify", str(path)])
    assert r.exit_code == 0 and "DAMAGED" not in r.output and "verified" not in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "cache")])  # the folder view goes on
    assert r.exit_code == 1 and f"{path}: masks folder/train" in r.output
    assert f"DAMAGED: 1 file(s) cannot be read, e.g. {chunk}" in r.output
    # unparsable JSON: one line naming the file, from info and from the stage itself (the
    # rebuild command is still found in a damaged zarr.json's text)
    for name in ("ids.json", "zarr.json"):
        good = (path / name).read_text()
        (path / name).write_text("{" + good[len(good) // 3:])
        for args in (["info", str(path)], ["masks", *map(str, base(folder, tmp_path))]):
            r = CliRunner().invoke(main, args)
            line = r.output.strip()
            assert r.exit_code == 1 and "\n" not in line and "Traceback" not in line, r.output
            assert line.startswith(f"Error: {path / name}: ") and "--overwrite" in line, line
        (path / name).write_text(good)
