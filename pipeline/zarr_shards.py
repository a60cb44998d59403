"""Read one inner chunk of a sharded Zarr v3 array straight from its shard file.

Zarr 3 reads a chunk through its asyncio event loop thread: a hop to that thread, the
shard index read and checked, the chunk read and decoded, a hop back. For the prior
loader's per-image patch-map read (one 360 x 480 uint16 chunk, ~12 KB compressed) that
machinery cost ~2-3 CPU-ms per image, half of a DataLoader worker's time at crop 224
(docs/benchmarks.md, prior, "The loader"). The bytes on disk are simple (the Zarr v3 sharding
codec, ``index_location = "end"``)::

    shard file = chunk bytes ... | index: n_chunks x (offset, nbytes) uint64 LE | crc32c

so :class:`ShardReader` reads a shard's index once (checking its crc32c, as zarr does),
keeps it while the shard file is unchanged (same inode, size and mtime), then reads each
chunk with one ``pread`` and decodes it (zstd, then the ``bytes`` codec's endianness): the
same array zarr returns, bit for bit (tested on every row of real stores), at a fraction
of the cost. Layouts it does not know (other codecs, storage transformers, a remote store)
are left to zarr: :meth:`ShardReader.open` returns None for them.

References
----------
.. [1] Zarr v3 specification, "Sharding codec" (zarr-specs, codecs/sharding-indexed/v1.0).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

EMPTY = 2**64 - 1  # offset and nbytes of a chunk that was never written (fill value)
_CRC = "crc32c"


def _codec_names(codecs: list[dict]) -> list[str]:
    return [c.get("name") for c in codecs]


class ShardReader:
    """Chunks of one sharded Zarr v3 array on a local filesystem, read without zarr.

    Parameters are read from the array's ``zarr.json``; use :meth:`open`.
    """

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        conf = meta["codecs"][0]["configuration"]
        self.shape = tuple(int(v) for v in meta["shape"])
        self.shard_shape = tuple(int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.chunk_shape = tuple(int(v) for v in conf["chunk_shape"])  # inner chunk
        self.per_shard = tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape,
                                                      strict=True))
        self.n_chunks = int(np.prod(self.per_shard))
        inner = conf["codecs"]
        endian = inner[0].get("configuration", {}).get("endian", "little")
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<" if endian == "little" else ">")
        self.native = self.dtype.newbyteorder("=")
        self.zstd = len(inner) > 1
        self.fill = np.array(meta.get("fill_value") or 0, dtype=self.native)
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        self.sep = enc.get("configuration", {}).get("separator", "/")
        self.prefix = "c" + self.sep if enc.get("name", "default") == "default" else ""
        self.index_at_end = conf.get("index_location", "end") == "end"
        self.index_bytes = 16 * self.n_chunks + 4
        self._index: dict[tuple[int, ...], tuple[tuple, np.ndarray]] = {}
        self._decoder = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def open(cls, array_dir: str | os.PathLike) -> ShardReader | None:
        """A reader for the array at ``array_dir``, or None when its layout is not the one
        this reader knows (then read it through zarr)."""
        path = Path(array_dir)
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        if not cls.supported(meta):
            return None
        return cls(path, meta)

    @staticmethod
    def supported(meta: dict) -> bool:
        """True for a v3 array with one ``sharding_indexed`` codec whose inner codecs are
        ``bytes`` (+ ``zstd``) and whose index is ``bytes`` (little endian) + ``crc32c``."""
        try:
            if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
                return False
            if meta.get("storage_transformers") or meta["chunk_grid"]["name"] != "regular":
                return False
            if meta.get("chunk_key_encoding", {}).get("name", "default") != "default":
                return False
            codecs = meta["codecs"]
            if _codec_names(codecs) != ["sharding_indexed"]:
                return False
            conf = codecs[0]["configuration"]
            inner = _codec_names(conf["codecs"])
            if inner not in (["bytes"], ["bytes", "zstd"]):
                return False
            index = conf.get("index_codecs", [])
            if _codec_names(index) != ["bytes", _CRC]:
                return False
            if index[0].get("configuration", {}).get("endian", "little") != "little":
                return False
            shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
            return all(s % c == 0 for s, c in zip(shard, conf["chunk_shape"], strict=True))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):
            return False

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_decoder"] = None  # rebuilt where it is used (a DataLoader worker)
        return state

    # ---------------------------------------------------------------- reading
    def shard_file(self, shard: tuple[int, ...]) -> Path:
        return self.path / (self.prefix + self.sep.join(str(k) for k in shard))

    def _shard_index(self, shard: tuple[int, ...], fd: int) -> np.ndarray:
        """n_chunks x 2 uint64 (offset, nbytes) of ``shard``, re-read when its file changed."""
        st = os.fstat(fd)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._index.get(shard)
        if hit is not None and hit[0] == key:
            return hit[1]
        if st.st_size < self.index_bytes:
            raise OSError(f"{self.shard_file(shard)}: {st.st_size} bytes, shorter than its "
                          f"{self.index_bytes}-byte shard index")
        at = st.st_size - self.index_bytes if self.index_at_end else 0
        raw = os.pread(fd, self.index_bytes, at)
        body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
        import google_crc32c  # zarr's own dependency for this codec

        if google_crc32c.value(body) != crc:
            raise OSError(f"{self.shard_file(shard)}: shard index checksum mismatch "
                          f"(a torn or corrupted write)")
        index = np.frombuffer(body, dtype="<u8").reshape(self.n_chunks, 2)
        self._index[shard] = (key, index)
        return index

    def read(self, chunk: tuple[int, ...]) -> np.ndarray:
        """Inner chunk ``chunk`` (its grid coordinates) as a new writable array of
        :attr:`chunk_shape` (the fill value where it was never written)."""
        if len(chunk) != len(self.chunk_shape):
            raise ValueError(f"chunk coordinates {chunk} do not match a "
                             f"{len(self.chunk_shape)}-d array")
        shard = tuple(int(c) // p for c, p in zip(chunk, self.per_shard, strict=True))
        within = tuple(int(c) % p for c, p in zip(chunk, self.per_shard, strict=True))
        slot = int(np.ravel_multi_index(within, self.per_shard))
        try:
            fd = os.open(self.shard_file(shard), os.O_RDONLY)
        except FileNotFoundError:  # a shard never written holds only the fill value
            return np.full(self.chunk_shape, self.fill, dtype=self.native)
        try:
            offset, nbytes = (int(v) for v in self._shard_index(shard, fd)[slot])
            if offset == EMPTY and nbytes == EMPTY:
                return np.full(self.chunk_shape, self.fill, dtype=self.native)
            data = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        if len(data) != nbytes:
            raise OSError(f"{self.shard_file(shard)}: chunk {chunk} is cut short "
                          f"({len(data)} of {nbytes} bytes)")
        out = np.empty(self.chunk_shape, dtype=self.dtype)
        if self.zstd:
            if self._decoder is None:
                from numcodecs import Zstd  # zarr's own codec implementation

                self._decoder = Zstd()
            self._decoder.decode(data, out=out)
        else:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
        return out if self.dtype == self.native else out.astype(self.native)
