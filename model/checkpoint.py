"""One checkpoint module for both trainers (``qgnet-train prior`` and ``qgnet-train fss``).

In the spirit of timm's ``CheckpointSaver``: the trainers build a plain dict (model,
optimiser, scheduler, step, RNG states, config) and this module does the rest::

    save_checkpoint(path, state, kind=...)   temporary file, fsync, rename; adds kind/version
    save_atomic(obj, path)                   the same for any torch.save object (the model bundle)
    load_checkpoint(path, kind=...)          the ONE loader: weights_only=True, and every
                                             unreadable / foreign file -> CheckpointError
    CheckpointSaver(folder, ...)             keep-N rotation of step-*.pt, best/last files
    find_checkpoint(where, ...)              a file as given, or the newest in a run dir
    rng_state(device) / set_rng_state        python, numpy, torch and this rank's CUDA device
    truncate_metrics(path, step)             metrics.jsonl cut back to the checkpoint's step
    WindowMeans                              means of the logged scalars over a window
    resume_config(cls, saved, cli, ...)      THE resume rule (below)

The resume rule (both trainers)
-------------------------------
A resumed run takes the checkpoint's config as its base. An option given again on the
command line (or in the trainer's config) must either be *resumable* -- it does not change
the math of the run -- or equal the checkpoint's value; anything else is refused with one
message naming every differing option. Resumable options:

- both trainers: ``resume``, ``out``, ``max_steps``, ``device``, ``workers``, ``log_every``,
  ``ckpt_every``, ``progress``, ``cache_dir``, ``root`` (where the data is, not what it is);
- ``qgnet-train prior`` also: ``keep_checkpoints``, ``export_only``, ``patch_store``;
- ``qgnet-train fss`` also: ``threads`` (CPU threads; results are bit-identical on CPU with
  the same number of threads, and a different number only reorders float sums).

``max_steps`` is reset (not inherited) on resume: the checkpoint's stop is not the new one.
The device is resumable because the RNG state is saved and restored per rank for the
rank's own device (:func:`rng_state`), so a run resumed with fewer visible GPUs loads.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from pipeline.errors import CheckpointError, ConfigError

CHECKPOINT_VERSION = 1

# what each kind of file must hold (older checkpoints carry no "kind": the keys decide)
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "prior": ("model", "optimizer", "scheduler", "step", "config"),
    "fss": ("model", "model_meta", "step", "config"),
    "prior_export": ("backbone", "backbone_name"),
}
KIND_HINTS = {
    "prior": "pass a run dir or checkpoints/step-*.pt written by `qgnet-train prior`",
    "fss": "pass a run dir, best.pt or last.pt written by `qgnet-train fss`",
    "prior_export": "pass the prior_extractor.pt written by `qgnet-train prior` (or --prior "
                    "imagenet)",
}

RESUMABLE_COMMON = frozenset({"resume", "out", "max_steps", "device", "workers", "log_every",
                              "ckpt_every", "progress", "cache_dir", "root"})


# ------------------------------------------------------------------------------ save / load
def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], *,
                    kind: str | None = None) -> Path:
    """Write ``state`` (plus ``kind``, a version and the time) atomically with
    :func:`save_atomic`: a run killed while saving, or a full disk, leaves the previous
    checkpoint intact."""
    state = {**state, "checkpoint_version": CHECKPOINT_VERSION, "saved_at": time.time()}
    if kind is not None:
        state["kind"] = kind
    return save_atomic(state, path)


class _KeepWriteError:
    """The file object handed to ``torch.save``: it writes through to ``fh`` and keeps the
    first ``OSError`` of a write. torch's zip writer reports a failed write (disk full, file
    size limit) as ``RuntimeError: ... unexpected pos N vs M``, without errno or file name;
    :func:`save_atomic` raises the kept ``OSError`` instead."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through ``<name>.tmp<pid>``, fsync and a rename.

    Any failure removes the temporary, so ``path`` is either the new file or untouched. A
    refusal of the operating system (disk full, file too large, read-only or forbidden
    folder) is raised as that ``OSError`` (same errno) naming ``path`` and saying the
    previous file is unchanged, which the command line prints as one line
    (:mod:`cli._errors`). A run killed while saving leaves the temporary for
    :func:`pipeline.fileio.remove_stale_temporaries`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            writer = _KeepWriteError(fh)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        kept = "the previous file is unchanged" if os.path.lexists(path) else "nothing was written"
        raise OSError(exc.errno, f"{exc.strerror or exc}; {kept}", str(path)) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a folder that turned read-only: the temporary is left to a later cleanup
        pass


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None,
                    map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: the one loader of the project.

    Parameters
    ----------
    path : checkpoint file.
    kind : ``"prior"``, ``"fss"``, ``"prior_export"`` or None (any dict).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        A file that is not a torch checkpoint (random bytes, truncated), one holding pickled
        objects other than tensors and plain containers, or one of another kind. The
        message names the file and what to pass instead.
    """
    path = Path(path)
    hint = KIND_HINTS.get(kind or "", "pass a checkpoint written by `qgnet-train`")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; check the path, or train first "
                                f"({hint})")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):  # a real torch file, but with arbitrary Python objects
            raise CheckpointError(
                f"{path} holds pickled Python objects that a safe load (weights_only) refuses: "
                f"not a qgnet checkpoint; {hint}") from None
        raise CheckpointError(f"{path} is not a torch checkpoint (corrupt, or another file "
                              f"type); {hint}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, UnicodeDecodeError,
            OSError, IndexError, KeyError, AttributeError) as err:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (corrupt, truncated or another file "
            f"type: {type(err).__name__}); {hint}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict; "
                              f"{hint}")
    if kind is not None:
        saved_kind = obj.get("kind")
        missing = [k for k in KIND_KEYS[kind] if k not in obj]
        if (saved_kind is not None and saved_kind != kind) or missing:
            what = f"a {saved_kind} checkpoint" if saved_kind else (
                f"not a {kind} checkpoint (no {', '.join(repr(m) for m in missing)})")
            raise CheckpointError(f"{path} is {what}; {hint}")
    return obj


def find_checkpoint(where: str | os.PathLike, *, kind: str) -> Path:
    """A checkpoint file as given, or the newest complete one of a run dir.

    ``kind="prior"``: the newest ``checkpoints/step-*.pt``; ``kind="fss"``: ``last.pt``.
    Half-written files (``*.tmp<pid>``) are never picked.
    """
    p = Path(where)
    if p.is_file():
        return p
    if kind == "fss":
        if (p / "last.pt").is_file():
            return p / "last.pt"
        raise FileNotFoundError(f"nothing to resume at {where}: expected a checkpoint file or "
                                f"a run dir holding last.pt")
    found = list_step_checkpoints(p / "checkpoints" if (p / "checkpoints").is_dir() else p)
    if not found:
        raise FileNotFoundError(f"no checkpoint (checkpoints/step-*.pt) in {p}; pass the run dir "
                                f"of an earlier run or a checkpoint file to --resume, or leave "
                                f"--resume out to start a new run")
    return found[-1][1]


STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def list_step_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step-N.pt`` files of ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), f) for f in folder.iterdir()
                  if (m := STEP_RE.match(f.name)) and f.is_file())


class CheckpointSaver:
    """Step checkpoints with keep-N rotation plus named ``best``/``last`` files in one folder.

    ``save_step(state, step)`` writes ``step-{step:07d}.pt`` and deletes all but the newest
    ``keep`` (0 keeps all); ``save_named(state, "last")`` writes ``last.pt``. Every write is
    atomic (:func:`save_checkpoint`).
    """

    def __init__(self, folder: str | os.PathLike, *, kind: str, keep: int = 0):
        self.folder, self.kind, self.keep = Path(folder), kind, int(keep)

    def save_step(self, state: Mapping[str, Any], step: int) -> Path:
        path = save_checkpoint(self.folder / f"step-{int(step):07d}.pt", state, kind=self.kind)
        if self.keep > 0:
            for _, old in list_step_checkpoints(self.folder)[:-self.keep]:
                old.unlink(missing_ok=True)
        return path

    def save_named(self, state: Mapping[str, Any], name: str) -> Path:
        return save_checkpoint(self.folder / f"{name}.pt", state, kind=self.kind)


# ------------------------------------------------------------------------------ leftovers
def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Drop the lines of ``metrics.jsonl`` logged after ``step`` (a resumed run replays them),
    so the file stays one clean curve. Atomic; returns the number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            s = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            dropped += 1  # a half-written last line of a killed run
            continue
        if s is not None and s > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)
    return dropped


# ------------------------------------------------------------------------------ RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | str | None = None) -> dict[str, Any]:
    """Python, numpy, torch and -- on a CUDA ``device`` -- that device's RNG state only.

    Tensors and lists only (safe for ``weights_only`` loads). Saving only the rank's own
    device (not ``get_rng_state_all``) lets a run resume where fewer GPUs are visible.
    """
    np_state = np.random.get_state()
    state = {
        "python": _tuplify_to_list(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device | str | None = None) -> None:
    """Restore :func:`rng_state`'s result; the CUDA state goes to ``device`` (this rank's).

    Older checkpoints hold a list (``get_rng_state_all``): the entry of ``device``'s index is
    used when it exists, else the first; resuming on CPU ignores a CUDA state.
    """
    random.setstate(_listify_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    device = torch.device(device) if device is not None else None
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        if not len(cuda):
            return
        idx = device.index or 0
        cuda = cuda[idx] if idx < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda, device)


def pick_rank_state(states: list[Any], rank: int) -> Any:
    """This rank's entry of a per-rank list (a run resumed on more ranks reuses rank 0's)."""
    if rank < len(states):
        return states[rank]
    warnings.warn(f"the checkpoint holds RNG states of {len(states)} rank(s); rank {rank} "
                  f"starts from rank 0's", stacklevel=2)
    return states[0]


def _tuplify_to_list(x):
    if isinstance(x, tuple):
        return [_tuplify_to_list(v) for v in x]
    return x


def _listify_to_tuple(x):
    if isinstance(x, list):
        return tuple(_listify_to_tuple(v) for v in x)
    return x


# ------------------------------------------------------------------------------ metrics
class WindowMeans:
    """Means of the scalars logged since the last :meth:`pop` (``sums`` keys: summed).

    Values are python numbers or 0-d tensors on the training device, kept as given: they
    are read on the host once, in :meth:`pop`, so a training step that does not log never
    waits for the device (tests/model/test_syncs.py).
    """

    def __init__(self, *, sums: Iterable[str] = ()):
        self.sums = frozenset(sums)
        self.rows: list[dict[str, Any]] = []

    def add(self, **values: Any) -> None:
        self.rows.append(dict(values))

    def __len__(self) -> int:
        return len(self.rows)

    def pop(self, *, reduce=None) -> dict[str, float]:
        """The window's means (sums for ``sums`` keys); ``reduce(keys, means)`` -> means may
        average them over ranks. Empties the window."""
        if not self.rows:
            return {}
        keys = list(self.rows[0])
        vals: list[float] = []
        on_device = {}  # key -> mean as a 0-d tensor, read together below
        for k in keys:
            col = [r[k] for r in self.rows]
            if any(isinstance(v, torch.Tensor) for v in col):
                dev = next(v.device for v in col if isinstance(v, torch.Tensor))
                on_device[k] = torch.stack([torch.as_tensor(v, device=dev).to(torch.float64)
                                            for v in col]).mean()
                vals.append(float("nan"))
            else:
                vals.append(sum(float(v) for v in col) / len(col))
        if on_device:  # the one host read of the window
            read = torch.stack(list(on_device.values())).tolist()
            for k, v in zip(on_device, read, strict=True):
                vals[keys.index(k)] = v
        if reduce is not None:
            vals = reduce(keys, vals)
        out = dict(zip(keys, vals, strict=True))
        for k in self.sums & set(out):
            out[k] *= len(self.rows)
        self.rows = []
        return out


# ------------------------------------------------------------------------------ resume rule
def changed_options(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                    resumable: Iterable[str]) -> list[str]:
    """Options of ``now`` that are not resumable and differ from the checkpoint's ``saved``."""
    resumable = frozenset(resumable)
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
            if k not in resumable and k in saved and _norm(saved[k]) != _norm(now[k])]


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def check_resume(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                 resumable: Iterable[str]) -> None:
    """Raise :class:`ConfigError` when ``now`` changes a non-resumable option of ``saved``."""
    diffs = changed_options(saved, now, resumable=resumable)
    if diffs:
        raise ConfigError("cannot resume: the checkpoint was trained with other options ("
                          + "; ".join(diffs) + "); leave them out to use the checkpoint's "
                          "values, or start a new run with another --out")


def resume_config(cls, saved: Mapping[str, Any], cli: Mapping[str, Any], *,
                  resumable: Iterable[str], reset: Mapping[str, Any] | None = None):
    """The config of a resumed run: the checkpoint's ``saved`` config, then ``reset`` (values
    that must not be inherited, e.g. ``max_steps``), then the command line ``cli`` (``None``
    = not given). Refuses (:class:`ConfigError`) a ``cli`` value that changes the run."""
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in cli.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {cls.__name__}")
    check_resume(saved, given, resumable=resumable)
    base = {k: v for k, v in saved.items() if k in fields}
    return cls(**{**base, **(reset or {}), **given})
