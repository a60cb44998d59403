"""pipeline.zarr_shards.ShardReader: the same arrays as zarr, straight from the shard files
(issue 20 §4), and clear errors for torn files."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import ShardedStore
from pipeline.zarr_shards import ShardReader

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def random_store(path, *, n=23, shard_size=5, dtype="uint16", seed=0, pending=(), failed=()):
    """A store of random maps of random sizes (some tiny, some the full padded size): a
    partial last shard, failed rows (stored as zeros = an empty chunk) and shards left
    unwritten (no file at all)."""
    rng = np.random.default_rng(seed)
    hw = np.stack([rng.integers(1, 40, n), rng.integers(1, 50, n)], 1)
    hw[0] = (39, 49)
    store = ShardedStore.create(path, ids=[f"i{j}" for j in range(n)], hw=hw, maps="labels",
                                dtype=dtype, attrs={"kind": "superpixels"}, shard_size=shard_size)
    hi = np.iinfo(np.dtype(dtype)).max
    maps = [None if j in failed else rng.integers(0, hi, tuple(hw[j]), endpoint=True).astype(dtype)
            for j in range(n)]
    for k in range(store.n_shards):
        if k not in pending:
            a, b = store.shard_range(k)
            store.write_shard(k, maps[a:b])
    return ShardedStore.open(path), maps


def zarr_row(store, i):
    h, w = (int(v) for v in store.hw[i])
    return np.asarray(store._maps[i, :h, :w])


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "int32"])
def test_every_row_equals_zarrs(tmp_path, dtype):
    store, maps = random_store(tmp_path / "s.zarr", dtype=dtype, pending=(2,), failed=(3, 4))
    assert store._reader is None
    for i in range(store.n):
        got, want = store.get(i), zarr_row(store, i)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.writeable and got.flags.c_contiguous
        if maps[i] is not None and i // 5 != 2:
            assert np.array_equal(got, maps[i])
    assert isinstance(store._reader, ShardReader)  # the fast path was the one used
    # the unwritten shard (no file) and a failed row (empty chunk) read as the fill value
    reader = ShardReader.open(tmp_path / "s.zarr" / "labels")
    assert not reader.shard_file((2, 0, 0)).exists()
    assert not reader.read((11, 0, 0)).any() and not reader.read((3, 0, 0)).any()


def test_a_rewritten_shard_is_read_afresh(tmp_path):
    store, _ = random_store(tmp_path / "s.zarr", n=6, shard_size=3)
    before = store.get(1)
    w = ShardedStore.open(tmp_path / "s.zarr", mode="r+")
    w.write_shard(0, [np.full(tuple(w.hw[j]), 7, np.uint16) for j in range(3)])
    after = store.get(1)  # same reader, cached index of shard 0
    assert (after == 7).all() and not np.array_equal(before, after)


def test_torn_shard_file_is_an_error_naming_it(tmp_path):
    store, _ = random_store(tmp_path / "s.zarr", n=6, shard_size=3)
    reader = ShardReader.open(tmp_path / "s.zarr" / "labels")
    path = reader.shard_file((1, 0, 0))
    data = path.read_bytes()
    path.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])  # index checksum
    with pytest.raises(OSError, match="checksum mismatch") as err:
        reader.read((4, 0, 0))
    assert str(path) in str(err.value)
    path.write_bytes(data[:10])
    with pytest.raises(OSError, match="shorter than its"):
        reader.read((4, 0, 0))


def test_unknown_layouts_are_left_to_zarr(tmp_path):
    store, _ = random_store(tmp_path / "s.zarr", n=4, shard_size=2)
    meta = json.loads((tmp_path / "s.zarr" / "labels" / "zarr.json").read_text())
    assert ShardReader.supported(meta)
    gzip = json.loads(json.dumps(meta))
    gzip["codecs"][0]["configuration"]["codecs"][1] = {"name": "gzip", "configuration": {"level": 1}}
    plain = {**meta, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}
    for other in (gzip, plain, {**meta, "zarr_format": 2}, {**meta, "storage_transformers": [{}]},
                  {}):
        assert not ShardReader.supported(other)
    assert ShardReader.open(tmp_path / "nowhere") is None
    (tmp_path / "s.zarr" / "labels" / "zarr.json").write_text(json.dumps(gzip))
    assert ShardReader.open(tmp_path / "s.zarr" / "labels") is None


def test_reader_pickles_for_dataloader_workers(tmp_path):
    store, _ = random_store(tmp_path / "s.zarr", n=4, shard_size=2)
    reader = ShardReader.open(tmp_path / "s.zarr" / "labels")
    first = reader.read((1, 0, 0))
    again = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(again.read((1, 0, 0)), first)


def test_real_photos_slic_maps_equal_zarrs(tmp_path):
    """Real maps (CamVid photos, SLIC through the superpixel stage's kernel)."""
    from PIL import Image

    from pipeline.superpixels import slic

    images = sorted((SHARED / "camvid" / "train" / "images").glob("*.jpg"))[:12]
    if not images:
        pytest.skip(f"no CamVid photos under {SHARED / 'camvid'} (../shared/data beside the repo)")
    maps = [slic(np.asarray(Image.open(p).convert("RGB")), n_segments=100, compactness=10,
                 backend="skimage").astype(np.uint16) for p in images]
    store = ShardedStore.create(tmp_path / "c.zarr", ids=[p.stem for p in images],
                                hw=[m.shape for m in maps], maps="labels", dtype="uint16",
                                attrs={"kind": "superpixels"}, shard_size=5)
    for k in range(store.n_shards):
        a, b = store.shard_range(k)
        store.write_shard(k, maps[a:b])
    store = ShardedStore.open(tmp_path / "c.zarr")
    for i, m in enumerate(maps):
        assert np.array_equal(store.get(i), m) and np.array_equal(store.get(i), zarr_row(store, i))
    assert store._reader
