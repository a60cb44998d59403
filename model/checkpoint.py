"""One checkpoint module for both trainers (``qgnet-train prior`` and ``qgnet-train fss``).

In the spirit of timm's ``CheckpointSaver``: the trainers build a plain dict (model,
optimiser, scheduler, step, RNG states, config) and this module does the rest::

    save_checkpoint(path, state, kind=...)   temporary file, fsync, rename; adds kind/version
    save_atomic(obj, path)                   the same for any torch.save object (the model bundle)
    load_checkpoint(path, kind=...)          the ONE loader: weights_only=True, and every
                                             unreadable / foreign file -> CheckpointError
    CheckpointSaver(folder, ...)             the policy: cadence, keep-N rotation of step-*.pt,
                                             last.pt, best tracking and best.pt
    find_checkpoint(where, ...)              a file as given, or the newest in a run dir
    rng_state(device) / set_rng_state        python, numpy, torch and this rank's CUDA device
    truncate_metrics(path, step)             metrics.jsonl cut back to the checkpoint's step
    WindowMeans                              means of the logged scalars over a window

The run around it (run dir, lock, resume rule, DDP, logs) is :mod:`model.run`; the resume
rule's comparison is :func:`pipeline.settings.check_resume`. The device is resumable because
the RNG state is saved and restored per rank for the rank's own device (:func:`rng_state`),
so a run resumed with fewer visible GPUs loads.
"""
from __future__ import annotations

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

from pipeline.errors import CheckpointError

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
    """Which checkpoints a run writes, when, and which one is the best (timm's
    ``CheckpointSaver``: one object owns the cadence, the rotation and the best).

    ``layout="step"`` (the prior): ``step-{step:07d}.pt``, all but the newest ``keep`` deleted
    (0 keeps all); ``layout="last"`` (few-shot): ``last.pt``. :meth:`due` says when: at each
    epoch end, every ``every`` steps (None: epoch ends only) and at ``stop`` (None: the
    trainer saves its end itself). ``best`` (a key such as ``"best_miou"``): :meth:`improved`
    tracks the highest validation value, :meth:`save` adds ``best`` and ``best_step`` to
    every checkpoint and ``name="best"`` writes ``best.pt``. Every write is atomic
    (:func:`save_checkpoint`).
    """

    def __init__(self, folder: str | os.PathLike, *, kind: str, layout: str = "step",
                 keep: int = 0, every: int | None = None, stop: int | None = None,
                 best: str | None = None):
        self.folder, self.kind, self.layout = Path(folder), kind, layout
        self.keep, self.every, self.stop, self.best_key = int(keep), every, stop, best
        self.best, self.best_step = -1.0, -1

    def due(self, step: int, *, epoch_end: bool = False) -> bool:
        """Whether the checkpoint of ``step`` is to be written."""
        return (epoch_end or (self.every is not None and step % self.every == 0)
                or (self.stop is not None and step == self.stop))

    def improved(self, value: float, step: int) -> bool:
        """Record a validation value; True when it is the best so far (write ``best`` then)."""
        if value > self.best:
            self.best, self.best_step = value, step
            return True
        return False

    def resume(self, ckpt: Mapping[str, Any]) -> None:
        """The best value and step a resumed checkpoint recorded."""
        if self.best_key is not None:
            self.best, self.best_step = float(ckpt[self.best_key]), int(ckpt["best_step"])

    def save(self, state: Mapping[str, Any], step: int, *, name: str | None = None) -> Path:
        """Write ``state`` (plus the best value and step when tracked) as ``name``.pt, or by
        the layout: ``step-N.pt`` (rotated) or ``last.pt``."""
        if self.best_key is not None:
            state = {**state, self.best_key: self.best, "best_step": self.best_step}
        if name is None and self.layout == "step":
            return self.save_step(state, step)
        return self.save_named(state, name or "last")

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
