"""A ring buffer of negative keys for MoCo-style contrast (MoCo's ``queue``/``queue_ptr``).

State lives in buffers (``keys``, ``ptr``), so it travels with ``state_dict()`` and
resumes exactly; it is not a parameter and never receives gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RingQueue(nn.Module):
    """Fixed-size FIFO of L2-normalised keys, overwritten in a ring.

    Parameters
    ----------
    dim : int
        Key dimension D (128 in MoCo v2).
    size : int
        Number of keys K (65,536 in MoCo v2).

    Attributes
    ----------
    keys : Tensor buffer, size x D (float32)
        Initialised with random unit vectors, as MoCo does (the first ``size`` enqueued
        keys replace them).
    ptr : Tensor buffer, (1,) int64
        Row the next key is written to.

    Notes
    -----
    ``enqueue(x)`` behaves exactly like writing the rows of ``x`` one after another at
    ``ptr`` and advancing ``ptr`` modulo ``size``: a batch may wrap around the end, and
    when it has more rows than ``size`` only its last ``size`` rows survive. Unlike
    MoCo's queue the batch size need not divide ``size`` (variable patch counts).

    Examples
    --------
    >>> q = RingQueue(4, 10)
    >>> q.enqueue(torch.randn(3, 4)); int(q.ptr)
    3
    """

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"RingQueue needs dim >= 1 and size >= 1, got dim={dim}, size={size}")
        self.dim = int(dim)
        self.size = int(size)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))  # keys: K x D
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Write ``keys`` (n x D, any n >= 0) at ``ptr``, wrapping around; detached, cast to fp32.

        ``valid`` (n bool, optional): write only those rows, in order, exactly as
        ``enqueue(keys[valid])`` would, but without reading the count on the host. Nothing
        here waits for the device when ``n <= size`` (always, for MoCo's batch of keys and
        for the N x P patch keys with the default queue of 65,536).
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"enqueue expects n x {self.dim} keys, got {tuple(keys.shape)}")
        n = keys.shape[0]
        if valid is not None and valid.shape != (n,):
            raise ValueError(f"valid must be a bool vector of {n}, got {tuple(valid.shape)}")
        if n == 0:
            return
        keys = keys.detach().to(self.keys.dtype)
        if valid is not None and n > self.size:  # rare (tiny queues): count the rows on the host
            keys, valid = keys[valid], None
            n = keys.shape[0]
            if n == 0:
                return
        ptr = self.ptr[0]  # 0-d device tensor: never read on the host
        if valid is None:
            if n > self.size:  # the first n - size rows would be overwritten within this call
                ptr = ptr + (n - self.size)
                keys = keys[-self.size:]
                n = self.size
            rows = (ptr + torch.arange(n, device=self.keys.device)) % self.size  # rows: n
            self.keys.index_copy_(0, rows, keys)
            self.ptr[0] = (ptr + n) % self.size
            return
        # Valid rows go to ptr, ptr+1, ... in order; invalid rows to the slots right after
        # them, rewriting what is there (a no-op). All n target rows are distinct (n <= size).
        valid = valid.to(device=self.keys.device, dtype=torch.bool)
        before = torch.cumsum(valid.long(), 0)  # before: n (valid rows up to and including i)
        n_valid = before[-1]
        rank = torch.where(valid, before - 1,
                           n_valid + torch.arange(n, device=self.keys.device) - before)  # rank: n
        rows = (ptr + rank) % self.size  # rows: n, a permutation of ptr .. ptr+n-1 (mod size)
        new = torch.where(valid.unsqueeze(1), keys, self.keys.index_select(0, rows))  # new: n x D
        self.keys.index_copy_(0, rows, new)
        self.ptr[0] = (ptr + n_valid) % self.size

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"
