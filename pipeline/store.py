"""The Zarr layout of every per-image cache (superpixel maps, class masks), in one place.

A store is a Zarr v3 group on disk::

    <name>.zarr/
      zarr.json             group attributes: kind, params, versions, command, shard_size, ...
      <maps>/               (N, Hmax, Wmax) padded 2-D maps, one chunk per image,
                            shards of ``shard_size`` images, zstd
      hw/                   (N, 2) int32 true (H, W) of each image; (0, 0) for a failed image
      done/                 (n_shards,) bool, set only after a whole shard was written
      <extra>/              optional per-image rows, e.g. n_segments (N,), class_pixels (N, C+1)
      ids.json              image ids in store order
      failures/shard-K.json failures of shard K: [{"id": ..., "reason": ...}]

**One writer per shard.** Zarr 3.1 silently loses data when several tasks write into one
shard, so :meth:`ShardedStore.write_shard` writes a whole shard at once, and every
per-image side array is chunked by shard too. ``done[k]`` is set last: a killed run never
leaves a shard marked done with half its data, and a resumed run recomputes exactly the
shards not marked done. A shard file torn by a kill would make zarr's sharding codec fail
its checksum on the next write (it merges into the existing shard), so ``write_shard``
first deletes whatever files shard ``k`` left behind; a resumed store is then byte-identical
to an uninterrupted one (only the group's ``command`` / ``created`` attributes differ).

Readers load ``hw``, ids and side arrays whole (cheap) and read maps one chunk at a time.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.errors import StoreError  # noqa: F401 - re-exported: callers import it from here

DEFAULT_SHARD_SIZE = 128
MIN_AUTO_SHARD_SIZE = 16


def auto_shard_size(n: int) -> int:
    """Images per shard for a store of ``n`` images when none is given: 128 (2-3 MB shard
    files of 640x480 maps) for large splits, smaller for small ones so that there are at
    least 32 shards to spread over the workers (at most 16 images per shard fewer): with
    two 128-image shards for 200 images one worker idled for 56 images' time (bench/stage.py
    measured 1.42x instead of ~1.9x for 2 workers). Depends on ``n`` only, so the same split
    always gets the same layout."""
    return int(min(DEFAULT_SHARD_SIZE, max(MIN_AUTO_SHARD_SIZE, math.ceil(int(n) / 32))))


def _zarr():
    import zarr  # imported lazily: `qgnet-prep --help` stays fast

    return zarr


class ShardedStore:
    """A sharded Zarr store of padded per-image 2-D maps plus per-image side arrays.

    Use :meth:`create` to lay a new store out, :meth:`open` to read or resume one.
    """

    def __init__(self, path: Path, group, *, mode: str):
        self.path = Path(path)
        self._group = group
        self.mode = mode
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.maps_name: str = self.attrs["maps"]
        self.shard_size: int = int(self.attrs["shard_size"])
        self.ids: list[str] = json.loads((self.path / "ids.json").read_text())
        self._index = {k: i for i, k in enumerate(self.ids)}
        self.hw: np.ndarray = np.asarray(group["hw"][:])  # N x 2
        self._maps = group[self.maps_name]

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(cls, path: str | os.PathLike, *, ids: Sequence[str], hw: np.ndarray,
               maps: str, dtype, attrs: Mapping[str, Any],
               extras: Mapping[str, tuple[tuple[int, ...], Any]] | None = None,
               shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False) -> "ShardedStore":
        """Lay out an empty store.

        Parameters
        ----------
        ids : sequence of str
            Image ids, in store order (N).
        hw : (N, 2) int array
            Image sizes; ``(0, 0)`` for images whose size could not be read.
        maps : str
            Name of the padded map array (``"labels"``, ``"masks"``).
        dtype : numpy dtype of the maps.
        attrs : mapping
            Provenance (kind, params, versions, command) stored in the group attributes.
        extras : mapping name -> (row shape, dtype)
            Per-image side arrays, e.g. ``{"n_segments": ((), "int32")}``.
        shard_size : int
            Images per shard (the unit of writing and of resuming).
        overwrite : bool
            Delete an existing store first; otherwise an existing path is an error.
        """
        zarr = _zarr()
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists; open it to resume, or pass --overwrite "
                                 f"to start over")
            shutil.rmtree(path)
        ids = list(ids)
        hw = np.asarray(hw, dtype=np.int32).reshape(len(ids), 2)
        if len(set(ids)) != len(ids):
            raise ValueError("image ids must be unique")
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        n = len(ids)
        hmax = max(int(hw[:, 0].max()) if n else 1, 1)
        wmax = max(int(hw[:, 1].max()) if n else 1, 1)
        n_shards = max(math.ceil(n / shard_size), 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        comp = zarr.codecs.ZstdCodec(level=3)
        group.create_array(maps, shape=(max(n, 1), hmax, wmax), dtype=np.dtype(dtype),
                           chunks=(1, hmax, wmax), shards=(shard_size, hmax, wmax),
                           compressors=comp, fill_value=0)
        group.create_array("hw", shape=(max(n, 1), 2), dtype="int32", chunks=(shard_size, 2),
                           fill_value=0)
        group["hw"][:n] = hw
        group.create_array("done", shape=(n_shards,), dtype="bool", chunks=(1,),
                           fill_value=False)
        for name, (row_shape, edtype) in (extras or {}).items():
            row_shape = tuple(row_shape)
            group.create_array(name, shape=(max(n, 1),) + row_shape, dtype=np.dtype(edtype),
                               chunks=(shard_size,) + row_shape, fill_value=0, compressors=comp)
        (tmp / "ids.json").write_text(json.dumps(ids))
        (tmp / "failures").mkdir()
        group.attrs.update({**dict(attrs), "maps": maps, "shard_size": int(shard_size),
                            "n_images": n, "n_shards": n_shards, "extras": sorted(extras or {}),
                            "layout_version": 1})
        os.replace(tmp, path)  # a store appears whole or not at all
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | os.PathLike, *, mode: str = "r",
             kind: str | None = None, hint: str = "") -> "ShardedStore":
        """Open an existing store. ``kind`` checks ``attrs['kind']``; ``hint`` is the command
        that would create the store, quoted in the error when it is missing."""
        zarr = _zarr()
        path = Path(path)
        if not (path / "zarr.json").is_file() or not (path / "ids.json").is_file():
            more = f"; create it with: {hint}" if hint else ""
            raise StoreError(f"no qgnet store at {path}{more}")
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        store = cls(path, group, mode=mode)
        if kind is not None and store.attrs.get("kind") != kind:
            raise StoreError(f"{path} holds {store.attrs.get('kind')!r}, expected {kind!r}")
        return store

    # ---------------------------------------------------------------- shape facts
    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_shards(self) -> int:
        return int(self.attrs["n_shards"])

    def shard_range(self, k: int) -> tuple[int, int]:
        """Image index range ``[start, stop)`` of shard ``k``."""
        start = k * self.shard_size
        return start, min(start + self.shard_size, self.n)

    @property
    def done(self) -> np.ndarray:
        """(n_shards,) bool, read fresh from disk."""
        return np.asarray(self._group["done"][:])

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def pending_shards(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(~self.done)]

    def index(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in store {self.path}") from None

    # ---------------------------------------------------------------- writing
    def write_shard(self, k: int, maps: Sequence[np.ndarray | None], *,
                    extras: Mapping[str, np.ndarray] | None = None,
                    failures: Iterable[Mapping[str, str]] = ()) -> None:
        """Write the whole shard ``k`` and then mark it done.

        ``maps[j]`` is the map of image ``start + j`` (``None`` for a failed image: zeros and
        ``hw = (0, 0)`` are stored). ``extras[name]`` holds the shard's rows of a side array.
        Must be the only writer of this shard.
        """
        start, stop = self.shard_range(k)
        if len(maps) != stop - start:
            raise ValueError(f"shard {k} holds {stop - start} images, got {len(maps)} maps")
        arr = self._maps
        block = np.zeros((self.shard_size,) + tuple(arr.shape[1:]), dtype=arr.dtype)
        hw = np.zeros((self.shard_size, 2), dtype=np.int32)
        for j, m in enumerate(maps):
            if m is None:
                continue
            m = np.asarray(m)
            if m.ndim != 2 or m.shape[0] > arr.shape[1] or m.shape[1] > arr.shape[2]:
                raise ValueError(f"map of {self.ids[start + j]!r} has shape {m.shape}; the store "
                                 f"holds 2-D maps up to {arr.shape[1:]}")
            if m.size and (m.max() > np.iinfo(arr.dtype).max or m.min() < 0):
                raise ValueError(f"map of {self.ids[start + j]!r} has values outside {arr.dtype}")
            block[j, : m.shape[0], : m.shape[1]] = m
            hw[j] = m.shape
        n_rows = stop - start
        failures = [dict(f) for f in failures]
        self._clear_shard(k)
        fpath = self.path / "failures" / f"shard-{k:06d}.json"
        if failures:
            tmp = fpath.with_name(fpath.name + ".tmp")
            tmp.write_text(json.dumps(failures, indent=1))
            os.replace(tmp, fpath)
        elif fpath.exists():
            fpath.unlink()
        # one shard-aligned write per array; the last shard may be partial
        arr[start:stop] = block[:n_rows]
        self._group["hw"][start:stop] = hw[:n_rows]
        for name, rows in (extras or {}).items():
            self._group[name][start:stop] = np.asarray(rows)
        self._group["done"][k] = True
        self.hw[start:stop] = hw[:n_rows]

    def _clear_shard(self, k: int) -> None:
        """Delete the files shard ``k`` of every per-image array left behind (a killed run
        may have torn them) and clear ``done[k]``.

        Every per-image array is chunked (maps: sharded) by ``shard_size`` along axis 0, so
        with zarr's default chunk keys everything of shard ``k`` lives under ``<array>/c/<k>``.
        """
        if self._group["done"][k]:
            self._group["done"][k] = False
        names = [self.maps_name, "hw", *self.attrs.get("extras", [])]
        for name in names:
            enc = self._group[name].metadata.chunk_key_encoding
            if getattr(enc, "name", "default") != "default" or getattr(enc, "separator", "/") != "/":
                continue  # not our layout; zarr merges into the old shard
            target = self.path / name / "c" / str(k)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def extra_spec(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(row shape, dtype)`` of the side array ``name``."""
        arr = self._group[name]
        return tuple(arr.shape[1:]), np.dtype(arr.dtype)

    def check_attrs(self, expected: Mapping[str, Any], *, hint: str = "") -> None:
        """Raise :class:`StoreError` naming every attribute that differs from ``expected``
        (e.g. a store made with other parameters at the same path)."""
        from pipeline.config import _plain

        diffs = [f"{key}: store has {self.attrs.get(key)!r}, this run wants {_plain(value)!r}"
                 for key, value in expected.items() if self.attrs.get(key) != _plain(value)]
        if diffs:
            more = f"; {hint}" if hint else ""
            raise StoreError(f"{self.path} was made with other settings ("
                             + "; ".join(diffs) + f"){more}")

    # ---------------------------------------------------------------- reading
    def get(self, i: int) -> np.ndarray:
        """Map of image ``i`` cropped to its true size (``H x W``)."""
        h, w = (int(v) for v in self.hw[i])
        return np.asarray(self._maps[i, :h, :w])

    def get_by_id(self, image_id: str) -> np.ndarray:
        return self.get(self.index(image_id))

    def extra(self, name: str) -> np.ndarray:
        """A side array, loaded whole."""
        if name not in self._group:
            raise KeyError(f"store {self.path} has no array {name!r}")
        return np.asarray(self._group[name][: self.n])

    @property
    def failures(self) -> list[dict[str, str]]:
        """Failure records ``{"id", "reason"}`` of the shards marked done, in store order."""
        done = self.done
        out: list[dict[str, str]] = []
        for f in sorted((self.path / "failures").glob("shard-*.json")):
            k = int(f.stem.split("-")[1])
            if k < len(done) and done[k]:
                out.extend(json.loads(f.read_text()))
        return out

    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def summary(self) -> dict[str, Any]:
        """What ``qgnet-prep info`` prints."""
        done = self.done
        size = self.nbytes_on_disk()
        ok = int((self.hw[:, 0] > 0).sum())
        return {
            "path": str(self.path),
            "kind": self.attrs.get("kind"),
            "dataset": self.attrs.get("dataset"),
            "split": self.attrs.get("split"),
            "params": self.attrs.get("params"),
            "images": self.n,
            "images_written": ok,
            "shards_done": f"{int(done.sum())}/{len(done)}",
            "failures": len(self.failures),
            "bytes_on_disk": size,
            "bytes_per_image": round(size / max(ok, 1), 1),
            "versions": self.attrs.get("versions"),
            "command": self.attrs.get("command"),
            "created": self.attrs.get("created"),
        }
