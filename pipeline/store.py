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

**Map size limit.** Maps are padded to the largest image of the store, so one huge image
would make every map read (and the store) as large as it: an image with a side above
:data:`MAX_MAP_SIDE` (4096 px) is refused by the stages as a failure of its own, with a
message to downscale it, and does not enter the padding (docs/data.md).

**Damaged stores.** Every read names what it could not read: an unparsable ``zarr.json`` or
``ids.json``, a chunk file that does not decode (zstd or shard-index errors) and a failures
file are :class:`StoreError` naming the file and the command that rebuilds the store
(``... --overwrite``); :meth:`ShardedStore.verify` reads every chunk once
(``qgnet-prep info`` runs it).

**One writer per store.** :class:`StoreLock` (``<name>.zarr.lock`` beside the store, an
``fcntl.flock`` plus the holder's pid and host) is held by every command that writes a store:
a second writer is refused with "store in use by pid N"; the lock of a killed process is
released by the kernel and taken over with a message naming the dead pid.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pipeline.errors import StoreError  # noqa: F401 - re-exported: callers import it from here
from pipeline.settings import format_command

DEFAULT_SHARD_SIZE = 128
MIN_AUTO_SHARD_SIZE = 16
#: Images with a side above this are refused by the stages (a failure record that says to
#: downscale them): maps are padded to the largest image, so one 8000 x 8000 image among
#: 960 x 720 frames made every map read 40x slower. 4096 covers COCO, PASCAL, CamVid, ADE.
MAX_MAP_SIDE = 4096


def is_store(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a qgnet store (a Zarr group with ``ids.json``)."""
    path = Path(path)
    return (path / "zarr.json").is_file() and (path / "ids.json").is_file()


def read_ids(path: str | os.PathLike) -> list[str]:
    """The image ids of the store at ``path``, in store order, without opening Zarr."""
    path = Path(path)
    if not is_store(path):
        raise StoreError(f"no qgnet store at {path}")
    return _read_json(path / "ids.json", store=path, attrs=_raw_attrs(path))


def rebuild_hint(path: str | os.PathLike, attrs: Mapping[str, Any] | None = None,
                 hint: str = "") -> str:
    """How to replace a damaged store: its recorded ``qgnet-prep`` command (else ``hint``,
    the command that builds it) with ``--overwrite``."""
    attrs = attrs or {}
    command = str(attrs.get("command") or "")
    if command.startswith("prep.py "):  # recorded from ``python -m cli.prep``
        command = "qgnet-prep " + command[len("prep.py "):]
    if not command.startswith("qgnet-prep "):
        command = hint
    if not command and attrs.get("kind") in ("masks", "superpixels") and attrs.get("dataset"):
        command = format_command(  # the store's own facts, as a command
            "qgnet-prep", attrs["kind"], dataset=attrs["dataset"], root=attrs.get("root"),
            split=attrs.get("split"), method=attrs.get("method"), out=str(path))
    if not command:
        return f"delete {path} and build it again with the qgnet-prep command that made it"
    return f"rebuild it: {command}" + ("" if "--overwrite" in command.split() else " --overwrite")


def _raw_attrs(path: Path) -> dict[str, Any]:
    """The group attributes read as plain JSON; from a ``zarr.json`` that does not parse,
    the recorded ``command`` if it can still be found in the text (else ``{}``)."""
    try:
        text = (path / "zarr.json").read_text(errors="replace")
    except OSError:
        return {}
    try:
        return dict(json.loads(text).get("attributes") or {})
    except (ValueError, AttributeError, TypeError):
        found = re.search(r'"command":\s*("(?:[^"\\]|\\.)*")', text)
        try:
            return {"command": json.loads(found.group(1))} if found else {}
        except ValueError:
            return {}


def _read_json(file: Path, *, store: Path, attrs: Mapping[str, Any] | None = None,
               hint: str = "") -> Any:
    """``json.loads`` of one file of a store; unparsable: :class:`StoreError` naming it."""
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise StoreError(f"{file}: not valid JSON ({exc}); the store {store} is damaged; "
                         f"{rebuild_hint(store, attrs, hint)}") from None


def _damaged_json(path: Path) -> Path | None:
    """The first JSON file of the store at ``path`` that does not parse, if any."""
    for f in [path / "zarr.json", path / "ids.json", *sorted(path.glob("*/zarr.json"))]:
        try:
            json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError):
            return f
        except OSError:
            continue
    return None


def lock_path(path: str | os.PathLike) -> Path:
    """``<store>.lock``, beside the store (the store folder itself is replaced on create)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def remove_partial_writes(path: str | os.PathLike) -> list[Path]:
    """Delete the half-written chunk files a killed writer left in a store; returns them.

    zarr's local store writes a chunk to ``<key>.<uuid>.partial`` and renames it into place,
    so a process killed between the two leaves that file behind forever (found by
    bench/fault_inject.py: the resumed store was otherwise byte-identical). Call it only
    while holding the store's :class:`StoreLock`: then no live writer owns such a file.
    """
    root = Path(path)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*.partial") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


class StoreLock:
    """Exclusive lock of one store for one writing process: ``with StoreLock(path): ...``.

    ``fcntl.flock`` on ``<store>.lock`` (released by the kernel when the holder dies, even by
    ``kill -9``), and the file records ``pid host`` for the messages:

    * held by a live process -> :class:`StoreError` "store ... in use by pid N on host H";
    * left by a dead process (content present, but the flock is free) -> taken over, and
      ``echo`` is told which pid held it.

    The lock file is removed on release. A second ``StoreLock`` of the same store in the same
    process (another thread) is refused too: flock locks belong to an open file.
    """

    def __init__(self, path: str | os.PathLike, *, echo: Callable[[str], None] | None = None,
                 what: str = "store"):
        self.store, self.what = Path(path), what
        self.path = lock_path(path)
        self.echo = echo
        self._fd: int | None = None
        self.took_over: str | None = None

    def __enter__(self) -> "StoreLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreError(f"{self.what} {self.store} is in use by {holder or 'another process'} "
                                 f"(lock {self.path}); wait for it to finish, or stop it and "
                                 f"re-run this command to resume") from None
            # the previous holder may have removed the file between our open and flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            self.took_over = previous
            if self.echo is not None:
                self.echo(f"taking over the stale lock of {previous} on {self.store} "
                          f"(that process is gone)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # unlink while locked: see the inode check
            finally:
                os.close(self._fd)  # releases the flock
                self._fd = None


def _read_holder(fd: int) -> str:
    """``"pid N on host H"`` from an open lock file, or ``""`` when it is empty."""
    text = os.pread(fd, 200, 0).decode(errors="replace").split()
    if not text:
        return ""
    return f"pid {text[0]}" + (f" on host {text[1]}" if len(text) > 1 else "")


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

    def __init__(self, path: Path, group, *, mode: str, hint: str = ""):
        self.path = Path(path)
        self._group = group
        self.mode = mode
        self.hint = hint  # the command that builds this store (quoted in damage messages)
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.maps_name: str = self.attrs["maps"]
        self.shard_size: int = int(self.attrs["shard_size"])
        self.ids: list[str] = _read_json(self.path / "ids.json", store=self.path,
                                         attrs=self.attrs, hint=hint)
        self._index = {k: i for i, k in enumerate(self.ids)}
        self._maps = group[self.maps_name]
        self._reader = None  # pipeline.zarr_shards.ShardReader of the maps (False: use zarr)
        self.hw: np.ndarray = np.asarray(self._read_whole("hw"))  # N x 2

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
        fits = (hw <= MAX_MAP_SIDE).all(axis=1)  # larger images become failures: no padding
        hmax = max(int(hw[fits, 0].max()) if fits.any() else 1, 1)
        wmax = max(int(hw[fits, 1].max()) if fits.any() else 1, 1)
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
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
            store = cls(path, group, mode=mode, hint=hint)
        except (StoreError, PermissionError):
            raise  # a file we may not read is not a damaged one
        except Exception as exc:  # noqa: BLE001 - zarr's metadata errors have no common type
            bad = _damaged_json(path)
            where = bad or path
            raise StoreError(f"{where}: cannot be read ({type(exc).__name__}: {exc}); the store "
                             f"{path} is damaged; {rebuild_hint(path, _raw_attrs(path), hint)}"
                             ) from None
        if kind is not None and store.attrs.get("kind") != kind:
            raise StoreError(f"{path} holds {store.attrs.get('kind')!r}, expected {kind!r}")
        return store

    @classmethod
    def open_complete(cls, path: str | os.PathLike, kind: str | None = None, hint: str = "",
                      *, what: str | None = None) -> "ShardedStore":
        """Open a store for reading and refuse it unless every shard is done.

        The one place that says "missing: create it with <hint>" and "incomplete: re-run
        <the command that made it> to resume" (``what`` names the store in messages, e.g.
        ``"mask store"``; default ``"<kind> store"``).
        """
        store = cls.open(path, kind=kind, hint=hint)
        if not store.complete:
            done = store.done
            what = what or f"{kind or store.attrs.get('kind') or 'qgnet'} store"
            command = store.attrs.get("command") or hint
            raise StoreError(f"{what} {store.path} is incomplete ({int(done.sum())}/{len(done)} "
                             f"shards done); re-run the same command to resume"
                             + (f": {command}" if command else ""))
        return store

    # ---------------------------------------------------------------- shape facts
    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_shards(self) -> int:
        return int(self.attrs["n_shards"])

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(Hmax, Wmax)``: the padded size of every map (the largest image that fits)."""
        return tuple(int(v) for v in self._maps.shape[1:])

    def shard_range(self, k: int) -> tuple[int, int]:
        """Image index range ``[start, stop)`` of shard ``k``."""
        start = k * self.shard_size
        return start, min(start + self.shard_size, self.n)

    @property
    def done(self) -> np.ndarray:
        """(n_shards,) bool, read fresh from disk."""
        return np.asarray(self._read_whole("done"))

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
        from pipeline.fileio import plain

        diffs = [f"{key}: store has {self.attrs.get(key)!r}, this run wants {plain(value)!r}"
                 for key, value in expected.items() if self.attrs.get(key) != plain(value)]
        if diffs:
            more = f"; {hint}" if hint else ""
            raise StoreError(f"{self.path} was made with other settings ("
                             + "; ".join(diffs) + f"){more}")

    # ---------------------------------------------------------------- reading
    def get(self, i: int) -> np.ndarray:
        """Map of image ``i`` cropped to its true size (``H x W``).

        Read from the shard file directly (:class:`pipeline.zarr_shards.ShardReader`: one
        ``pread`` and a zstd decode, the same array as zarr's, ~10x cheaper); through zarr
        when the array's layout is not the one that reader knows."""
        h, w = (int(v) for v in self.hw[i])
        try:
            if self._reader is None:
                from pipeline.zarr_shards import ShardReader

                reader = ShardReader.open(self.path / self.maps_name)
                self._reader = reader if reader is not None and reader.chunk_shape == (
                    1,) + self.map_shape else False
            if self._reader:
                return np.ascontiguousarray(self._reader.read((int(i), 0, 0))[0, :h, :w])
            return np.asarray(self._maps[i, :h, :w])
        except PermissionError:
            raise
        except Exception as exc:  # noqa: BLE001 - codec / shard-index errors of a damaged file
            raise self._damaged(self.maps_name, int(i) // self._rows(self.maps_name), exc,
                                what=f"the map of image {self.ids[i]!r}") from None

    def get_by_id(self, image_id: str) -> np.ndarray:
        return self.get(self.index(image_id))

    def extra(self, name: str) -> np.ndarray:
        """A side array, loaded whole."""
        if name not in self._group:
            raise KeyError(f"store {self.path} has no array {name!r}")
        return np.asarray(self._read_whole(name)[: self.n])

    # ---------------------------------------------------------------- damage
    def _rows(self, name: str) -> int:
        """Rows of ``name`` per file (a shard, or one chunk where the array is not sharded)."""
        arr = self._group[name]
        return int((getattr(arr, "shards", None) or arr.chunks)[0])

    def chunk_file(self, name: str, k: int) -> Path:
        """The file holding rows ``k * rows .. (k + 1) * rows`` of array ``name`` (zarr's
        default chunk keys: ``<name>/c/<k>/0/...``)."""
        ndim = self._group[name].ndim
        return self.path.joinpath(name, "c", str(int(k)), *["0"] * (ndim - 1))

    def _damaged(self, name: str, k: int, exc: BaseException, *, what: str) -> StoreError:
        return StoreError(f"{self.chunk_file(name, k)}: cannot be read ({type(exc).__name__}: "
                          f"{exc}); {what} in the store {self.path} is damaged; "
                          f"{rebuild_hint(self.path, self.attrs, self.hint)}")

    def _read_whole(self, name: str) -> np.ndarray:
        """Array ``name`` read whole; a file that does not decode is found and named."""
        arr = self._group[name]
        try:
            return arr[:]
        except PermissionError:
            raise
        except Exception as exc:  # noqa: BLE001 - find the file, then say which
            bad = self._unreadable(name)
            k = bad[0][0] if bad else 0
            raise self._damaged(name, k, exc if not bad else bad[0][1],
                                what=f"the array {name!r}") from None

    def _unreadable(self, name: str) -> list[tuple[int, BaseException]]:
        """``(file index, error)`` of every file of array ``name`` that does not decode."""
        arr = self._group[name]
        rows = self._rows(name)
        out = []
        for k, start in enumerate(range(0, int(arr.shape[0]), rows)):
            try:
                arr[start:start + rows]
            except Exception as exc:  # noqa: BLE001
                out.append((k, exc))
        return out

    def verify(self, progress: Callable[[int], None] | None = None) -> list[dict[str, str]]:
        """Read every file of the store once: every chunk of every array and every JSON
        file. Returns one ``{"file", "error", "images"}`` per file that cannot be read
        (``[]``: the store reads back whole). ``progress(n)`` is told each array's files."""
        problems: list[dict[str, str]] = []
        names = [self.maps_name, "hw", "done", *self.attrs.get("extras", [])]
        for name in names:
            rows = self._rows(name)
            for k, exc in self._unreadable(name):
                start = k * rows if name != "done" else k * self.shard_size
                stop = min(start + (rows if name != "done" else self.shard_size), self.n)
                problems.append({"file": str(self.chunk_file(name, k)),
                                 "error": f"{type(exc).__name__}: {exc}",
                                 "images": f"{start}..{stop - 1}" if stop > start else ""})
            if progress is not None:
                progress(-(-int(self._group[name].shape[0]) // rows))
        if len(self.ids) != int(self.attrs.get("n_images", len(self.ids))):
            problems.append({"file": str(self.path / "ids.json"), "images": "",
                             "error": f"{len(self.ids)} ids for {self.attrs['n_images']} images"})
        for f in sorted((self.path / "failures").glob("shard-*.json")):
            try:
                json.loads(f.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append({"file": str(f), "error": f"not valid JSON ({exc})", "images": ""})
        return problems

    def damage_hint(self) -> str:
        """The command that replaces this store (``rebuild it: ... --overwrite``)."""
        return rebuild_hint(self.path, self.attrs, self.hint)

    @property
    def failures(self) -> list[dict[str, str]]:
        """Failure records ``{"id", "reason"}`` of the shards marked done, in store order."""
        done = self.done
        out: list[dict[str, str]] = []
        for f in sorted((self.path / "failures").glob("shard-*.json")):
            k = int(f.stem.split("-")[1])
            if k < len(done) and done[k]:
                out.extend(_read_json(f, store=self.path, attrs=self.attrs, hint=self.hint))
        return out

    def finished_rows(self, done: np.ndarray | None = None) -> np.ndarray:
        """(N,) bool: the images of shards marked done (an interrupted store's other rows
        hold sizes from the layout, not results)."""
        done = self.done if done is None else done
        rows = np.zeros(self.n, dtype=bool)
        for k in np.flatnonzero(done):
            start, stop = self.shard_range(int(k))
            rows[start:stop] = True
        return rows

    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def summary(self) -> dict[str, Any]:
        """What ``qgnet-prep info`` prints."""
        done = self.done
        size = self.nbytes_on_disk()
        finished = self.finished_rows(done)
        ok = int((self.hw[finished, 0] > 0).sum())
        return {
            "path": str(self.path),
            "kind": self.attrs.get("kind"),
            "dataset": self.attrs.get("dataset"),
            "split": self.attrs.get("split"),
            "params": self.attrs.get("params"),
            "images": self.n,
            "images_written": ok,
            "images_in_done_shards": int(finished.sum()),
            "shards_done": f"{int(done.sum())}/{len(done)}",
            "failures": len(self.failures),
            "bytes_on_disk": size,
            "bytes_per_image": round(size / max(ok, 1), 1),
            "versions": self.attrs.get("versions"),
            "command": self.attrs.get("command"),
            "created": self.attrs.get("created"),
        }
