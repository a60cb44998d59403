"""Small torch utilities shared by the trainers: device, autocast, logs, metrics files and
torch.distributed helpers (checkpoints and RNG state: :mod:`model.checkpoint`)."""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# checkpoints, seeds and RNG state live in model/checkpoint.py (one module for both
# trainers); re-exported here for callers written before it existed
from model.checkpoint import (  # noqa: F401
    CHECKPOINT_VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


# ------------------------------------------------------------------------------ device
def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> the local CUDA device when present, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    from pipeline.errors import ConfigError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: qgnet runs on auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA but torch sees no GPU; "
                          f"use --device cpu or auto")
    return dev


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context on CPU (CPU bf16 is slower than fp32 here)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------ logs
def attach_file_log(log, path: str | os.PathLike, *, enabled: bool = True):
    """Send ``log`` (INFO and up) to the human-readable ``path`` (e.g. train.log), replacing
    a file handler this function attached before (a second run in one process does not
    write into the first run's file)."""
    import logging

    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        if getattr(h, "_qgnet_file_log", False):
            log.removeHandler(h)
            h.close()
    if enabled:
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        h._qgnet_file_log = True  # type: ignore[attr-defined]
        log.addHandler(h)
    return log


# ------------------------------------------------------------------------------ metrics
class MetricsWriter:
    """Append one JSON object per line to ``metrics.jsonl`` (flushed each write)."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# ------------------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Start torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1): nccl on CUDA,
    gloo on CPU. A plain ``python`` launch returns a single-process :class:`DistInfo`."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@torch.no_grad()
def all_gather_variable(t: torch.Tensor, *, sizes_equal: bool = False) -> torch.Tensor:
    """Concatenate ``t`` (n_r x ...) from every rank in rank order; n_r may differ per rank.

    Single process: returns ``t``. No gradient flows through the gathered copy.
    ``sizes_equal=True`` (the caller guarantees the same n on every rank, e.g. a batch
    under ``drop_last``): one all-gather and no host-device sync. Otherwise the sizes are
    exchanged first and read on the host (one sync), and an all-gather of the padded rows.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    t = t.contiguous()
    if sizes_equal:
        out = t.new_empty((world * t.shape[0],) + tuple(t.shape[1:]))  # out: world*n x ...
        dist.all_gather_into_tensor(out, t)
        return out
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = torch.cat(sizes).tolist()  # one sync for all ranks' sizes
    if all(s == sizes[0] for s in sizes):
        out = t.new_empty((world * t.shape[0],) + tuple(t.shape[1:]))
        dist.all_gather_into_tensor(out, t)
        return out
    top = max(sizes)
    padded = t.new_zeros((top,) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)], dim=0)
