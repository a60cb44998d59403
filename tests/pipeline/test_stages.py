"""The superpixel and mask stages: round trips, resume, concurrency, failures, locators.

A tiny in-test dataset (PNG files of 64x48 and a few other sizes, one truncated JPEG when
asked) keeps these tests independent of the real readers; a fake grid segmenter stands in
for ``pipeline.superpixels`` where the real kernels would only cost time (the real kernels
are exercised once each at the end, when they are installed).
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import mask_stage, runner, superpixel_stage
from pipeline.datasets.base import Dataset
from pipeline.errors import ConfigError, ImageReadError
from pipeline.mask_stage import build_mask_store, locate_mask_store
from pipeline.store import ShardedStore, StoreError
from pipeline.superpixel_stage import build_superpixel_store, locate_superpixel_store

SIZES = [(48, 64), (64, 48), (40, 56), (48, 64)]  # cycled over the images
NUM_CLASSES = 3


def toy_image(i: int) -> np.ndarray:
    """Four flat quadrants plus a little deterministic texture: H x W x 3 uint8."""
    h, w = SIZES[i % len(SIZES)]
    rng = np.random.default_rng(i)
    img = np.zeros((h, w, 3), np.uint8)
    colours = rng.integers(0, 256, size=(4, 3))
    img[: h // 2, : w // 2] = colours[0]
    img[: h // 2, w // 2:] = colours[1]
    img[h // 2:, : w // 2] = colours[2]
    img[h // 2:, w // 2:] = colours[3]
    return np.clip(img.astype(int) + rng.integers(-8, 9, size=img.shape), 0, 255).astype(np.uint8)


def toy_mask(i: int) -> np.ndarray:
    """Classes 0..3 in quadrant-ish blocks, an ignore border row: H x W uint8."""
    h, w = SIZES[i % len(SIZES)]
    m = np.zeros((h, w), np.uint8)
    m[: h // 2, w // 3:] = 1 + i % NUM_CLASSES
    m[h // 2:, : w // 4] = 1 + (i + 1) % NUM_CLASSES
    m[0] = 255
    return m


class ToyDataset(Dataset):
    """``n`` PNG images in ``root`` (ids ``img000``...), masks computed from the index;
    ``corrupt`` ids are written as truncated JPEGs. Picklable (plain attributes)."""

    name = "toy"
    class_names = ("cat", "dog", "bus")
    splits = ("train", "val")

    def __init__(self, root, n: int = 10, corrupt: tuple[int, ...] = ()):
        self.root = Path(root)
        self.n = n
        self.corrupt = tuple(corrupt)
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = self.image_path(self._id(i))
            if path.exists():
                continue
            if i in self.corrupt:
                Image.fromarray(toy_image(i)).save(path.with_suffix(".jpg"), quality=90)
                data = path.with_suffix(".jpg").read_bytes()
                path.with_suffix(".jpg").unlink()
                path.write_bytes(data[: len(data) * 4 // 5])  # header intact, data cut off
            else:
                Image.fromarray(toy_image(i)).save(path)

    @staticmethod
    def _id(i: int) -> str:
        return f"img{i:03d}"

    def ids(self, split):
        self.check_split(split)
        ids = [self._id(i) for i in range(self.n)]
        return ids if split == "train" else ids[:3]

    def image_path(self, image_id):
        i = int(image_id[3:])
        return self.root / (image_id + (".jpg" if i in self.corrupt else ".png"))

    def image_size(self, image_id):
        with Image.open(self.image_path(image_id)) as im:
            return im.height, im.width

    def load_image(self, image_id):
        try:
            with Image.open(self.image_path(image_id)) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as e:
            raise ImageReadError(f"{self.image_path(image_id)}: {e}") from e

    def load_mask(self, image_id):
        return toy_mask(int(image_id[3:]))


def fake_segment(image, method="slic", backend=None, **params):
    """8x8 grid cells, numbered 1..n, each split in two where the red channel is high."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    cells = (yy // 8) * ((w + 7) // 8) + xx // 8
    return (2 * cells + (image[..., 0] > 127) + 1).astype(np.uint16)


FAKE = types.SimpleNamespace(
    segment=fake_segment,
    DEFAULTS={"slic": {"n_segments": 100, "compactness": 10.0, "max_iter": 10, "backend": "auto"},
              "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 20, "backend": "auto"}},
)


@pytest.fixture
def fake_kernels(monkeypatch):
    """The fake segment and DEFAULTS, and a machine without fast-slic (so "auto" resolves to
    numba through the one backend table, pipeline.superpixels.resolve_backend)."""
    from pipeline.superpixels import _common

    monkeypatch.setattr(superpixel_stage, "_kernels", lambda: FAKE)
    monkeypatch.setattr(_common, "importable", lambda module: module != "fast_slic")
    return FAKE


@pytest.fixture
def toy(tmp_path):
    return ToyDataset(tmp_path / "data", n=10)


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_same_store(a: Path, b: Path) -> None:
    """Every file byte-identical, except the group attributes 'command' and 'created'."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name == "zarr.json":
            ja, jb = json.loads(fa[name]), json.loads(fb[name])
            for j in (ja, jb):
                j["attributes"].pop("command"), j["attributes"].pop("created")
            assert ja == jb
        else:
            assert fa[name] == fb[name], name


def sp(toy, tmp_path, name="sp.zarr", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("shard_size", 4)
    return build_superpixel_store(toy, split="train", method="slic", params={"n_segments": 50},
                                  backend="auto", out=tmp_path / name, **kw)


# ---------------------------------------------------------------------------- round trips
def test_superpixel_round_trip_threads(fake_kernels, toy, tmp_path):
    store, report = sp(toy, tmp_path, workers=2, scheduler="threads")
    assert store.complete and store.n == 10 and store.n_shards == 3
    assert report.computed == 10 and report.shards_run == 3 and report.failures == 0
    n_seg = store.extra("n_segments")
    for i, image_id in enumerate(toy.ids("train")):
        expected = fake_segment(toy.load_image(image_id))
        got = store.get_by_id(image_id)
        assert got.dtype == np.uint16 and got.shape == SIZES[i % 4]
        np.testing.assert_array_equal(got, expected)
        assert n_seg[i] == expected.max()
    assert store.attrs["params"] == {"n_segments": 50, "compactness": 10.0, "max_iter": 10,
                                     "backend": "numba", "limit": None}
    assert store.attrs["method"] == "slic" and store.attrs["backend"] == "numba"
    assert store.attrs["root"] == os.path.realpath(toy.root) and store.attrs["dataset"] == "toy"
    assert report.bytes_per_image > 0


def test_mask_round_trip_and_class_pixels(toy, tmp_path):
    store, report = build_mask_store(toy, split="train", out=tmp_path / "m.zarr", shard_size=4,
                                     workers=2, progress=False)
    cp = store.extra("class_pixels")
    assert cp.shape == (10, NUM_CLASSES + 1) and cp.dtype == np.int64
    for i in range(len(toy.ids("train"))):
        m = toy_mask(i)
        np.testing.assert_array_equal(store.get(i), m)
        np.testing.assert_array_equal(cp[i], np.bincount(m[m != 255], minlength=NUM_CLASSES + 1))
    assert store.attrs["class_names"] == ["cat", "dog", "bus"] and store.attrs["num_classes"] == 3
    assert report.failures == 0


def test_mask_with_class_id_above_c_is_a_failure(toy, tmp_path, monkeypatch):
    def bad_mask(image_id):
        m = toy_mask(int(image_id[3:]))
        if image_id == "img002":
            m[5, 5] = 7
        return m

    monkeypatch.setattr(toy, "load_mask", bad_mask)
    store, report = build_mask_store(toy, split="train", out=tmp_path / "m.zarr", shard_size=4,
                                     progress=False)
    assert [f["id"] for f in store.failures] == ["img002"]
    assert "class id 7" in store.failures[0]["reason"]
    assert tuple(store.hw[2]) == (0, 0) and store.extra("class_pixels")[2].sum() == 0


# ---------------------------------------------------------------------------- concurrency
def test_one_task_per_shard(fake_kernels, toy, tmp_path, monkeypatch):
    calls = []
    real = runner.compute_shard

    def recording(path, k, *args):
        calls.append(k)
        return real(path, k, *args)

    monkeypatch.setattr(runner, "compute_shard", recording)
    store, _ = sp(toy, tmp_path, workers=2, shard_size=2)
    assert sorted(calls) == list(range(5)) and max(collections.Counter(calls).values()) == 1
    assert int((store.hw[:, 0] > 0).sum()) == 10
    with pytest.raises(RuntimeError, match="one writer per shard"):
        runner.plan_shards([0, 1, 1])


def test_processes_two_workers_lose_nothing(toy, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # spawned workers need ToyDataset
    try:
        serial, _ = build_mask_store(toy, split="train", out=tmp_path / "s.zarr", shard_size=2,
                                     workers=1, scheduler="sync", progress=False)
        par, report = build_mask_store(toy, split="train", out=tmp_path / "p.zarr",
                                       shard_size=2, workers=2, scheduler="processes",
                                       progress=True)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert report.shards_run == 5 and par.complete
    assert int((par.hw[:, 0] > 0).sum()) == 10
    for i in range(10):
        np.testing.assert_array_equal(par.get(i), serial.get(i))
    np.testing.assert_array_equal(par.extra("class_pixels"), serial.extra("class_pixels"))
    assert_same_store(serial.path, par.path)


# ---------------------------------------------------------------------------- resume
def test_resume_after_interrupt_is_byte_identical(fake_kernels, toy, tmp_path):
    full, _ = sp(toy, tmp_path, name="full.zarr", workers=2)

    def interrupted(image, **kw):  # dies inside shard 1 (images 4..7), once
        if image.shape[:2] == (64, 48) and interrupted.armed and image[0, 0, 0] == toy_image(5)[0, 0, 0]:
            interrupted.armed = False
            raise KeyboardInterrupt
        return fake_segment(image, **kw)

    interrupted.armed = True
    kernels = types.SimpleNamespace(**{**vars(FAKE), "segment": interrupted})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(superpixel_stage, "_kernels", lambda: kernels)
        with pytest.raises(KeyboardInterrupt, match="re-run the same command"):
            sp(toy, tmp_path, name="cut.zarr", workers=1, scheduler="sync")
    cut = ShardedStore.open(tmp_path / "cut.zarr")
    pending = cut.pending_shards()  # dask picks the order; shard 1 died, another one may be done
    assert 1 in pending and len(pending) == 2 and not cut.complete
    # a kill in the middle of writing leaves a torn shard file behind: resume must cope
    torn = tmp_path / "cut.zarr" / "labels" / "c" / "1" / "0" / "0"
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"torn shard")
    store, report = sp(toy, tmp_path, name="cut.zarr", workers=2)
    assert report.shards_run == 2 and store.complete
    assert report.computed == sum(np.subtract(*store.shard_range(k)[::-1]) for k in pending)
    assert_same_store(full.path, store.path)


def test_resume_after_os_exit_in_subprocess(toy, tmp_path):
    """A real kill: the process dies (os._exit) inside shard 1; re-running resumes."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {os.getcwd()!r}]
        import test_stages as t
        from pipeline import mask_stage
        real = mask_stage.mask_map
        def dying(ds, image_id):
            if image_id == "img005":
                os._exit(3)
            return real(ds, image_id)
        mask_stage.mask_map = dying
        ds = t.ToyDataset({str(toy.root)!r}, n=10)
        mask_stage.build_mask_store(ds, split="train", out={str(tmp_path / 'cut.zarr')!r},
                                    shard_size=4, workers=1, scheduler="sync", progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    cut = ShardedStore.open(tmp_path / "cut.zarr")
    assert cut.done.sum() == 1 and not cut.done[1]  # dask picks the order of the shards
    resumed, report = build_mask_store(toy, split="train", out=tmp_path / "cut.zarr",
                                       shard_size=4, progress=False)
    assert report.shards_run == 2
    full, _ = build_mask_store(toy, split="train", out=tmp_path / "full.zarr", shard_size=4,
                               progress=False)
    assert_same_store(full.path, resumed.path)


def test_complete_store_rerun_does_no_work(fake_kernels, toy, tmp_path, monkeypatch):
    sp(toy, tmp_path)

    def boom(*a, **k):
        raise AssertionError("a complete store must not be recomputed")

    monkeypatch.setattr(runner, "compute_shard", boom)
    monkeypatch.setattr(runner, "read_sizes", boom)
    store, report = build_superpixel_store("toy", split="train", method="slic",
                                           params={"n_segments": 50}, out=tmp_path / "sp.zarr",
                                           progress=False, root=toy.root)  # by name: never opened
    assert report.already_complete and report.computed == 0 and store.complete
    assert "nothing to do" in report.lines()[0]


@pytest.mark.parametrize("complete", [True, False])
def test_store_from_another_root_is_refused(fake_kernels, toy, tmp_path, monkeypatch, complete):
    """Same dataset name and ids, other images: the store's recorded root decides, checked
    before anything is opened or computed (a complete store used to be returned as is)."""
    store, _ = sp(toy, tmp_path)
    masks, _ = build_mask_store(toy, split="train", out=tmp_path / "m.zarr", progress=False)
    if not complete:
        store._clear_shard(1)
        masks._clear_shard(0)
    other = ToyDataset(tmp_path / "other", n=10)

    def boom(*a, **k):
        raise AssertionError("nothing may be read or computed for a foreign store")

    monkeypatch.setattr(runner, "compute_shard", boom)
    monkeypatch.setattr(runner, "read_sizes", boom)
    for dataset, root in ((other, None), ("toy", other.root)):
        with pytest.raises(StoreError, match=f"made from the images in {toy.root}.*--overwrite"):
            build_superpixel_store(dataset, split="train", method="slic",
                                   params={"n_segments": 50}, out=tmp_path / "sp.zarr",
                                   progress=False, root=root)
        with pytest.raises(StoreError, match=f"made from the images in {toy.root}"):
            build_mask_store(dataset, split="train", out=tmp_path / "m.zarr", progress=False,
                             root=root)


def test_auto_shard_size_balances_small_splits():
    from pipeline.store import auto_shard_size

    assert auto_shard_size(10) == 16 and auto_shard_size(200) == 16
    assert auto_shard_size(1464) == 46 and auto_shard_size(82_783) == 128
    for n in (1, 200, 1000, 5000, 10**6):  # >= 32 shards unless the shards hit 16 images
        size = auto_shard_size(n)
        assert 16 <= size <= 128 and (-(-n // size) >= 32 or size in (16, 128))


def test_overwrite_starts_over(fake_kernels, toy, tmp_path):
    sp(toy, tmp_path, limit=3)
    store, report = sp(toy, tmp_path, limit=3, overwrite=True)
    assert report.computed == 3 and store.n == 3


# ---------------------------------------------------------------------------- failures
def test_corrupt_jpeg_is_recorded_and_run_finishes(fake_kernels, tmp_path):
    ds = ToyDataset(tmp_path / "data", n=6, corrupt=(2,))
    store, report = sp(ds, tmp_path, workers=2)
    assert store.complete and report.failures == 1
    (fail,) = store.failures
    assert fail["id"] == "img002" and "ImageReadError" in fail["reason"]
    assert tuple(store.hw[2]) == (0, 0) and store.get(2).size == 0
    assert store.extra("n_segments")[2] == 0
    assert int((store.hw[:, 0] > 0).sum()) == 5


def test_unreadable_size_is_a_failure(fake_kernels, toy, tmp_path):
    (toy.root / "img001.png").write_bytes(b"not an image")
    store, report = sp(toy, tmp_path)
    assert [f["id"] for f in store.failures] == ["img001"]
    assert store.failures[0]["reason"].startswith("image size could not be read")
    assert tuple(store.hw[1]) == (0, 0)


# ---------------------------------------------------------------------------- options
def test_limit_and_store_key(fake_kernels, toy, tmp_path):
    store, _ = build_superpixel_store(toy, split="train", method="slic", limit=5,
                                      cache_dir=tmp_path / "cache", shard_size=4, progress=False)
    assert store.ids == toy.ids("train")[:5] and store.attrs["params"]["limit"] == 5
    assert store.path.parent == tmp_path / "cache" / "toy" / "superpixels"
    assert store.path.name.startswith("slic-train-")
    # the backend is part of the key: auto resolves to numba here, so these are one store
    same = superpixel_stage.superpixel_params("slic", {}, backend="numba", limit=5)
    assert store.attrs["params"] == same


def test_other_params_at_same_path_are_refused(fake_kernels, toy, tmp_path):
    sp(toy, tmp_path, limit=4)
    with pytest.raises(StoreError, match="other settings.*n_segments"):
        build_superpixel_store(toy, split="train", method="slic", params={"n_segments": 60},
                               limit=4, out=tmp_path / "sp.zarr", progress=False)


@pytest.mark.parametrize("kw, match", [
    (dict(method="watershed"), "unknown superpixel method"),
    (dict(params={"n_segments": -5}), "--n-segments must be an integer >= 1"),
    (dict(params={"compactness": 0}), "--compactness must be > 0"),
    (dict(params={"scale": 3.0}), "--scale do.*not apply to slic"),
    (dict(backend="fast-slic", method="felzenszwalb"), "does not implement felzenszwalb"),
    (dict(backend="fast-slic"), "not installed"),
    (dict(limit=0), "--limit must be >= 1"),
    (dict(workers=0), "--workers must be an int >= 1, got 0"),
    (dict(shard_size=0), "--shard-size must be an int >= 1, got 0"),  # was: silently 16
    (dict(scheduler="mpi"), "unknown scheduler"),
])
def test_bad_options(fake_kernels, toy, tmp_path, kw, match):
    args = dict(split="train", method="slic", out=tmp_path / "x.zarr", progress=False)
    args.update(kw)
    with pytest.raises(ConfigError, match=match):  # one line on the command line
        build_superpixel_store(toy, **args)


# ---------------------------------------------------------------------------- locators
def test_locate_superpixel_store(fake_kernels, toy, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(StoreError, match="qgnet-prep superpixels --dataset toy --split val "
                                         "--method slic"):
        locate_superpixel_store("toy", "val", "slic", cache_dir=cache)
    default, _ = build_superpixel_store(toy, split="val", method="slic", cache_dir=cache,
                                        progress=False)
    located = locate_superpixel_store("toy", "val", "slic", cache_dir=cache)
    assert located.path == default.path and located.complete  # the open store, not a path
    # exact params: another hash is not accepted in place of the asked one
    with pytest.raises(StoreError, match="--n-segments 40"):
        locate_superpixel_store("toy", "val", "slic", cache_dir=cache, params={"n_segments": 40})
    other, _ = build_superpixel_store(toy, split="val", method="slic", params={"n_segments": 40},
                                      cache_dir=cache, progress=False)
    assert locate_superpixel_store("toy", "val", "slic", cache_dir=cache,
                                   params={"n_segments": 40}).path == other.path
    # no default store, one other complete store: accepted; two: an error listing them
    import shutil

    shutil.rmtree(default.path)
    assert locate_superpixel_store("toy", "val", "slic", cache_dir=cache).path == other.path
    third, _ = build_superpixel_store(toy, split="val", method="slic", params={"n_segments": 30},
                                      cache_dir=cache, progress=False)
    with pytest.raises(StoreError, match="(?s)several complete.*--patch-store"):
        locate_superpixel_store("toy", "val", "slic", cache_dir=cache)


def test_locate_incomplete_store_says_resume(fake_kernels, toy, tmp_path):
    cache = tmp_path / "cache"
    store, _ = build_superpixel_store(toy, split="train", method="slic", cache_dir=cache,
                                      shard_size=4, progress=False)
    store._group["done"][1] = False
    with pytest.raises(StoreError, match="incomplete.*re-run the same command to resume"):
        locate_superpixel_store("toy", "train", "slic", cache_dir=cache)


def test_locate_mask_store(toy, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(StoreError, match="qgnet-prep masks --dataset toy --split train"):
        locate_mask_store("toy", "train", cache_dir=cache)
    store, _ = build_mask_store(toy, split="train", cache_dir=cache, progress=False)
    located = locate_mask_store("toy", "train", cache_dir=cache)
    assert located.path == store.path and located.attrs["kind"] == "masks"
    np.testing.assert_array_equal(located.extra("class_pixels"), store.extra("class_pixels"))
    with pytest.raises(StoreError, match="other settings.*limit"):
        build_mask_store(toy, split="train", cache_dir=cache, limit=3, progress=False)
    assert mask_stage.class_image_counts(store, min_pixels=1).shape == (NUM_CLASSES + 1,)


# ---------------------------------------------------------------------------- real kernels
def _real_kernels():
    try:
        import pipeline.superpixels as sp_mod

        sp_mod.segment, sp_mod.DEFAULTS  # noqa: B018
        return sp_mod
    except (ImportError, AttributeError):
        pytest.skip("pipeline.superpixels (segment, DEFAULTS) has not landed yet")


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_real_kernels_threads(tmp_path, method):
    sp_mod = _real_kernels()
    ds = ToyDataset(tmp_path / "data", n=6)
    params = {"n_segments": 12} if method == "slic" else {"scale": 50.0}
    store, report = build_superpixel_store(ds, split="train", method=method, params=params,
                                           out=tmp_path / "r.zarr", shard_size=4, workers=2,
                                           progress=False)
    assert report.failures == 0, store.failures
    backend = store.attrs["backend"]
    kw = dict(params, num_threads=1) if backend == "fast-slic" else params
    for i, image_id in enumerate(ds.ids("train")):
        expected = sp_mod.segment(ds.load_image(image_id), method=method, backend=backend, **kw)
        np.testing.assert_array_equal(store.get(i), expected)
        assert store.get(i).min() >= 1


def test_real_slic_processes_equal_threads(tmp_path):
    """2 spawned processes (the dataset pickled to them), several shards: nothing lost."""
    import cloudpickle

    _real_kernels()
    ds = ToyDataset(tmp_path / "data", n=10)
    kw = dict(split="train", method="slic", params={"n_segments": 12}, shard_size=3,
              progress=False)
    threads, _ = build_superpixel_store(ds, out=tmp_path / "t.zarr", workers=2, **kw)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        procs, report = build_superpixel_store(ds, out=tmp_path / "p.zarr", workers=2,
                                               scheduler="processes", **kw)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert report.shards_run == 4 and report.failures == 0
    assert int((procs.hw[:, 0] > 0).sum()) == 10
    assert_same_store(threads.path, procs.path)


def test_distributed_scheduler_address(toy, tmp_path):
    """A dask.distributed scheduler address: one future per shard (progress per shard)."""
    from distributed import LocalCluster

    serial, _ = build_mask_store(toy, split="train", out=tmp_path / "s.zarr", shard_size=4,
                                 scheduler="sync", progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        store, report = build_mask_store(toy, split="train", out=tmp_path / "d.zarr",
                                         shard_size=4, scheduler=cluster.scheduler_address,
                                         progress=False)
    assert report.shards_run == 3 and store.complete
    assert_same_store(serial.path, store.path)


def test_an_address_where_no_scheduler_answers_is_refused_at_once(toy, tmp_path):
    """Issue 22 §4: ``--scheduler tcp://127.0.0.1:1`` was a traceback after 30 s, with an
    incomplete store left behind; a port where something else listens (here a server that
    answers garbage) crashed distributed's handshake."""
    import socket
    import threading
    import time

    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^--scheduler tcp://127.0.0.1:{port}: no dask "
                                          rf"scheduler answers at that address \(Connection "
                                          rf"refused\); start one .* or use --scheduler threads"):
        build_mask_store(toy, split="train", out=tmp_path / "m.zarr", scheduler=f"tcp://127.0.0.1:{port}",
                         progress=False)
    assert time.perf_counter() - t0 < 10  # the client alone retried for 30 s
    assert not (tmp_path / "m.zarr").exists() and not list(tmp_path.glob("m.zarr*"))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def babble():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 8)
            conn.close()

    threading.Thread(target=babble, daemon=True).start()
    try:
        with pytest.raises(ConfigError, match="no dask scheduler answers at that address"):
            build_mask_store(toy, split="train", out=tmp_path / "m.zarr", progress=False,
                             scheduler=f"tcp://127.0.0.1:{server.getsockname()[1]}")
    finally:
        server.close()
    assert not (tmp_path / "m.zarr").exists()
    with pytest.raises(ConfigError, match="expected a dask scheduler address"):
        build_mask_store(toy, split="train", out=tmp_path / "m.zarr", scheduler="tcp://host:x",
                         progress=False)
