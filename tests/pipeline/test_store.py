"""ShardedStore: layout, round trips, done flags, failures, torn shards, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.store import ShardedStore, StoreError

IDS = [f"im{i}" for i in range(7)]
HW = [(5, 6), (4, 7), (5, 6), (3, 3), (5, 7), (2, 2), (4, 4)]  # Hmax 5, Wmax 7


def make(path, **kw):
    kw.setdefault("shard_size", 3)
    return ShardedStore.create(path, ids=IDS, hw=HW, maps="labels", dtype="uint16",
                               attrs={"kind": "superpixels", "params": {"a": 1}},
                               extras={"n_segments": ((), "int32"), "hist": ((3,), "int64")},
                               **kw)


def maps_of(k, store):
    start, stop = store.shard_range(k)
    return [np.arange(np.prod(HW[i]), dtype=np.uint16).reshape(HW[i]) + i for i in range(start, stop)]


def fill(store, shards=None):
    for k in range(store.n_shards) if shards is None else shards:
        start, stop = store.shard_range(k)
        store.write_shard(k, maps_of(k, store),
                          extras={"n_segments": np.arange(start, stop),
                                  "hist": np.ones((stop - start, 3)) * k})


def test_layout_and_round_trip(tmp_path):
    store = make(tmp_path / "s.zarr")
    assert store.n == 7 and store.n_shards == 3 and store.shard_range(2) == (6, 7)
    assert store.pending_shards() == [0, 1, 2] and not store.complete
    assert store.extra_spec("hist") == ((3,), np.dtype("int64"))
    fill(store)
    again = ShardedStore.open(tmp_path / "s.zarr", kind="superpixels")
    assert again.complete and again.failures == []
    for i, image_id in enumerate(IDS):
        expected = np.arange(np.prod(HW[i]), dtype=np.uint16).reshape(HW[i]) + i
        np.testing.assert_array_equal(again.get(i), expected)
        np.testing.assert_array_equal(again.get_by_id(image_id), expected)
    np.testing.assert_array_equal(again.extra("n_segments"), np.arange(7))
    assert again.extra("hist")[6].tolist() == [2, 2, 2]
    assert again.hw.tolist() == [list(hw) for hw in HW]
    s = again.summary()
    assert s["images"] == 7 and s["images_written"] == 7 and s["shards_done"] == "3/3"
    assert s["bytes_per_image"] > 0
    with pytest.raises(KeyError, match="not in store"):
        again.index("nope")


def test_failed_image_and_failures_of_done_shards_only(tmp_path):
    store = make(tmp_path / "s.zarr")
    maps = maps_of(1, store)
    maps[1] = None
    store.write_shard(1, maps, failures=[{"id": "im4", "reason": "ImageReadError: truncated"}])
    assert store.failures == [{"id": "im4", "reason": "ImageReadError: truncated"}]
    assert tuple(store.hw[4]) == (0, 0) and store.get(4).shape == (0, 0)
    # a failure file of a shard not marked done (killed before done[k]) is not reported
    store._group["done"][1] = False
    assert store.failures == []
    # rewriting the shard without failures removes the old record
    store.write_shard(1, maps_of(1, store))
    assert store.failures == [] and store.done.tolist() == [False, True, False]


def test_torn_shard_is_rewritten_and_resume_is_byte_identical(tmp_path):
    a, b = make(tmp_path / "a.zarr"), make(tmp_path / "b.zarr")
    fill(a)
    fill(b, [1])
    for k in (0, 2):  # what a kill in the middle of writing shards 0 and 2 leaves
        for name, rel in (("labels", f"c/{k}/0/0"), ("n_segments", f"c/{k}"), ("hw", f"c/{k}/0")):
            f = tmp_path / "b.zarr" / name / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"half a shard")
    fill(b, b.pending_shards())
    files = lambda p: {f.relative_to(p): f.read_bytes() for f in p.rglob("*") if f.is_file()}  # noqa: E731
    fa, fb = files(tmp_path / "a.zarr"), files(tmp_path / "b.zarr")
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_write_shard_checks(tmp_path):
    store = make(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="holds 3 images, got 2"):
        store.write_shard(0, [None, None])
    with pytest.raises(ValueError, match="up to"):
        store.write_shard(0, [np.ones((9, 9))] * 3)
    with pytest.raises(ValueError, match="outside uint16"):
        store.write_shard(0, [np.full((2, 2), 70000)] * 3)
    assert not store.done.any()


def test_create_and_open_errors(tmp_path):
    make(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists.*--overwrite"):
        make(tmp_path / "s.zarr")
    assert make(tmp_path / "s.zarr", overwrite=True).n == 7
    with pytest.raises(StoreError, match="no qgnet store.*create it with: qgnet-prep masks"):
        ShardedStore.open(tmp_path / "missing.zarr", hint="qgnet-prep masks --dataset demo")
    with pytest.raises(StoreError, match="holds 'superpixels', expected 'masks'"):
        ShardedStore.open(tmp_path / "s.zarr", kind="masks")
    with pytest.raises(ValueError, match="unique"):
        ShardedStore.create(tmp_path / "d.zarr", ids=["a", "a"], hw=[(1, 1)] * 2, maps="m",
                            dtype="uint8", attrs={})
    with pytest.raises(ValueError, match="shard_size"):
        make(tmp_path / "z.zarr", shard_size=0)


def test_check_attrs_names_the_difference(tmp_path):
    store = make(tmp_path / "s.zarr")
    store.check_attrs({"kind": "superpixels", "params": {"a": 1}})
    with pytest.raises(StoreError, match=r"params: store has \{'a': 1\}.*\{'a': 2\}.*--overwrite"):
        store.check_attrs({"params": {"a": 2}}, hint="pass --overwrite")


def test_attrs_and_ids_on_disk(tmp_path):
    make(tmp_path / "s.zarr")
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]
    assert meta["maps"] == "labels" and meta["shard_size"] == 3 and meta["n_shards"] == 3
    assert meta["extras"] == ["hist", "n_segments"]
    assert json.loads((tmp_path / "s.zarr" / "ids.json").read_text()) == IDS


# ---------------------------------------------------------------------------- damaged files
def _garble(path, at=10, n=30):
    data = bytearray(path.read_bytes())
    data[at:at + n] = b"x" * min(n, max(len(data) - at, 0))
    path.write_bytes(bytes(data))


HINT = "qgnet-prep superpixels --dataset d --split train"


@pytest.mark.parametrize("file, words", [
    ("zarr.json", "zarr.json: cannot be read (JSONDecodeError"),
    ("labels/zarr.json", "labels/zarr.json: cannot be read (JSONDecodeError"),
    ("ids.json", "ids.json: not valid JSON"),
    ("hw/c/1/0", "hw/c/1/0: cannot be read"),
    ("done/c/2", "done/c/2: cannot be read"),
])
def test_a_damaged_file_is_named_with_the_rebuild_command(tmp_path, file, words):
    """A corrupt zarr.json or ids.json was a JSONDecodeError traceback naming no file."""
    fill(make(tmp_path / "s.zarr"))
    target = tmp_path / "s.zarr" / file
    if target.suffix == ".json":
        target.write_text('{"zarr_format": 3, "no')
    else:
        _garble(target, at=0, n=64)
    with pytest.raises(StoreError) as err:
        store = ShardedStore.open(tmp_path / "s.zarr", hint=HINT)
        store.done  # noqa: B018 - done is read fresh from disk
    msg = str(err.value)
    assert words in msg and "\n" not in msg, msg
    assert f"the store {tmp_path / 's.zarr'} is damaged; rebuild it: {HINT} --overwrite" in msg


def test_a_damaged_chunk_is_named_on_read_and_found_by_verify(tmp_path):
    """A corrupt map chunk was reported as fine by ``info`` and failed in fss without a file."""
    store = make(tmp_path / "s.zarr")
    fill(store)
    assert store.verify() == []  # a sound store reads back whole
    _garble(tmp_path / "s.zarr" / "labels" / "c" / "1" / "0" / "0")
    _garble(tmp_path / "s.zarr" / "hist" / "c" / "2" / "0", at=0, n=64)
    (tmp_path / "s.zarr" / "failures" / "shard-000000.json").write_text("[{")
    store = ShardedStore.open(tmp_path / "s.zarr", hint=HINT)
    np.testing.assert_array_equal(store.get(0), maps_of(0, store)[0])  # other shards still read
    with pytest.raises(StoreError, match=r"labels/c/1/0/0: cannot be read .*the map of image "
                                         r"'im3' in the store .* is damaged; rebuild it"):
        store.get(3)
    with pytest.raises(StoreError, match=r"hist/c/2/0: cannot be read .*the array 'hist'"):
        store.extra("hist")
    problems = store.verify()
    assert [(p["file"].split("s.zarr/")[1], p["images"]) for p in problems] == [
        ("labels/c/1/0/0", "3..5"), ("hist/c/2/0", "6..6"), ("failures/shard-000000.json", "")]
    assert "not valid JSON" in problems[2]["error"]


def test_rebuild_hint_prefers_the_recorded_command():
    from pipeline.store import rebuild_hint

    assert rebuild_hint("s", {"command": "prep.py masks --dataset d"}) == \
        "rebuild it: qgnet-prep masks --dataset d --overwrite"
    assert rebuild_hint("s", {"command": "qgnet-prep masks --overwrite"}) == \
        "rebuild it: qgnet-prep masks --overwrite"
    assert rebuild_hint("s", {"command": "pytest -q"}, "qgnet-prep masks --dataset x") == \
        "rebuild it: qgnet-prep masks --dataset x --overwrite"  # not a qgnet-prep command
    assert rebuild_hint("/c/s.zarr", {"kind": "masks", "dataset": "d", "split": "val",
                                      "root": "/data"}) == \
        ("rebuild it: qgnet-prep masks --dataset d --root /data --split val --out /c/s.zarr "
         "--overwrite")
    assert rebuild_hint("s", {}).startswith("delete s and build it again")
