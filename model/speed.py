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
"""
from __future__ import annotations

import torch
from torch import nn


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
