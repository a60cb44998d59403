"""CUDA speed switches shared by the trainers, the evaluator and ``bench/gpu_check.py``.

Each one is a no-op unless the device is CUDA, so CPU runs (and their exact-resume tests)
never change.

* ``torch.backends.cudnn.benchmark = True``: cuDNN times its convolution algorithms for
  each new input shape once and keeps the fastest. Both trainers use fixed crops (224 for
  the prior, 473 / 641 for few-shot), so the few shapes are timed once per run.
* TF32 for fp32 matmuls (``torch.backends.cuda.matmul.allow_tf32``; cuDNN convolutions
  already default to TF32): the guided and prior region maps run their cosine bmm in fp32
  outside autocast (``model.fss.qgnet.cosine_max_map``, ~425 GFLOP per shot per step at 473 /
  batch 8); TF32 keeps a 10-bit mantissa, i.e. cosines to ~1e-3, well inside what the
  min-max-normalised map can show.
* channels_last (NHWC) for the few-shot network: the frozen backbones' convolutions and
  the new layers run on tensor cores without NCHW <-> NHWC transposes. The prior trainer
  has its own ``--channels-last`` option (default on, CUDA only).

And one host fact: :func:`default_loader_workers`, the prior loader's workers when
``--workers`` is not set, from the cores this process may actually run on.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

#: most loader workers chosen automatically: each one holds a copy of the dataset reader
#: and up to ``prefetch_factor`` batches in shared memory
MAX_AUTO_WORKERS = 32


def available_cores(*, cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity (``taskset``, a container's cpuset),
    bounded by the cgroup v2 CPU quota (``cpu.max``: ``"200000 100000"`` = 2 cores) when one
    is set. ``os.cpu_count()`` counts the host's cores, which a container may not have."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup_root, "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(math.ceil(int(quota) / int(period)), 1))
    except (OSError, ValueError):  # no cgroup v2 file, or one we cannot read: no quota
        pass
    return max(cores, 1)


def default_loader_workers(*, world: int = 1, cores: int | None = None) -> int:
    """DataLoader workers per process when none are asked for: this process's share of the
    cores (``cores / world`` under DDP), less one for the main process (the training loop,
    which queues the GPU's work) and one for the pin-memory thread, at least 1 and at most
    :data:`MAX_AUTO_WORKERS`. 16 cores, one GPU: 14 workers (the old ``min(8, cpus)`` left
    half of them idle); 2 cores: 1.

    ``cores``: default :func:`available_cores`.
    """
    cores = available_cores() if cores is None else int(cores)
    share = cores // max(int(world), 1)
    return max(1, min(share - 2, MAX_AUTO_WORKERS))


def configure_cuda(device: torch.device | str) -> bool:
    """Turn on cuDNN autotuning and TF32 matmuls when ``device`` is CUDA; return whether
    anything was changed (False on CPU)."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def channels_last_on_cuda(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model.to(memory_format=torch.channels_last)`` on CUDA (in place; 4-D weights only),
    unchanged on CPU. Convolutions follow the weights' layout, so NCHW inputs come out NHWC
    after the first one (checked on CPU in ``tests/model/fss/test_qgnet.py``)."""
    if torch.device(device).type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model
