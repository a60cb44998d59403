"""CPU measurements of two GPU-step changes of issue 13 (§4, §8), against the old code.

1. ``--part split-bn``: forward + backward time of a conv-SplitBN-ReLU stack (ResNet
   layer1 shape: 64 channels, 56 x 56, batch 32, 8 groups) for
   NCHW (the F.batch_norm view), NHWC through the old reshape (copies to NCHW and back),
   and NHWC through the new channels_last path. On CPU the convolutions dominate and
   oneDNN's NHWC kernels differ from CUDA's, so only the ratio of the BN variants means
   anything; the GPU number waits for ``python -m bench.gpu_check`` on a lent device.
2. ``--part prior-map``: bytes autograd keeps for backward in ``cosine_max_map`` (QGNet's
   prior map: 256 channels, 60 x 60 at 473) for the old quotient formula and the new
   normalise-then-bmm, counted exactly with ``torch.autograd.graph.saved_tensors_hooks``
   (the CPU stand-in for CUDA's peak memory), and the forward + backward time.

    python -m bench.gpu_step_parts [--part all] [--repeats 5] [--out bench/results/gpu_step_parts.json]
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import add_out_argument, median_of, write_result
from model.fss.qgnet import cosine_max_map, minmax_normalise
from model.prior.moco import SplitBatchNorm


class OldSplitBN(SplitBatchNorm):
    """The SplitBatchNorm before issue 13 §4: always the N/G x G*C x H x W reshape."""

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.num_splits
        rm, rv = self.running_mean.repeat(g), self.running_var.repeat(g)
        out = F.batch_norm(x.reshape(n // g, c * g, h, w), rm, rv, self.weight.repeat(g),
                           self.bias.repeat(g), True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(rm.view(g, c).mean(0))
            self.running_var.copy_(rv.view(g, c).mean(0))
        return out.view(n, c, h, w)


def _stack(bn_cls, depth=4, c=64, groups=8):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), bn_cls(c, groups), nn.ReLU()]
    return nn.Sequential(*layers)


def _time(fn, repeats):
    """Median wall seconds of ``repeats`` calls after one warm-up (oneDNN primitive creation)."""
    return median_of(fn, repeats, warmup=1)[0]


def split_bn(repeats: int, batch: int = 32, size: int = 56) -> dict:
    x = torch.randn(batch, 64, size, size)
    variants = {"nchw": (OldSplitBN, torch.contiguous_format),
                "nhwc_old_reshape": (OldSplitBN, torch.channels_last),
                "nhwc_new": (SplitBatchNorm, torch.channels_last)}
    res = {}
    for name, (cls, fmt) in variants.items():
        net = _stack(cls).to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt).requires_grad_(True)

        def run(net=net, xi=xi):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net(xi).sum().backward()

        res[name] = _time(run, repeats)
    out = {"shape": f"{batch} x 64 x {size} x {size}, 4 x (conv3x3 + SplitBN(8) + ReLU)",
           **{f"s_{k}": v for k, v in res.items()},
           "nhwc_new_vs_nhwc_old": res["nhwc_old_reshape"] / res["nhwc_new"],
           "nhwc_new_vs_nchw": res["nchw"] / res["nhwc_new"]}
    return out


def _old_cosine_max_map(query, keys, eps=1e-7):
    n, c, h, w = query.shape
    q = query.float().reshape(n, c, h * w)
    k = keys.float().reshape(n, c, -1).transpose(1, 2)
    sim = torch.bmm(k, q) / (torch.bmm(k.norm(dim=2, keepdim=True), q.norm(dim=1, keepdim=True)) + eps)
    return minmax_normalise(sim.max(dim=1).values, eps=eps).reshape(n, 1, h, w)


def prior_map(repeats: int, batch: int = 2, side: int = 60, c: int = 256) -> dict:
    torch.manual_seed(0)
    q = torch.relu(torch.randn(batch, c, side, side)).requires_grad_(True)
    k = torch.relu(torch.randn(batch, c, side, side)).requires_grad_(True)
    res = {}
    for name, fn in (("old_quotient", _old_cosine_max_map), ("new_normalise_bmm", cosine_max_map)):
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(q, k)
        res[f"saved_mb_{name}"] = sum(saved) / 2**20
        del out

        def run(fn=fn):
            fn(q, k).sum().backward()

        res[f"s_{name}"] = _time(run, repeats)
    p = side * side
    return {"shape": f"batch {batch}, {c} channels, {side} x {side} (473 input)", **res,
            "saved_ratio": res["saved_mb_old_quotient"] / res["saved_mb_new_normalise_bmm"],
            "time_ratio": res["s_old_quotient"] / res["s_new_normalise_bmm"],
            "saved_mb_per_image_old": res["saved_mb_old_quotient"] / batch,
            "old_two_pxp_fp32_mb_per_image": 2 * p * p * 4 / 2**20}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "split-bn", "prior-map"), default="all")
    ap.add_argument("--repeats", type=int, default=5)
    add_out_argument(ap, "gpu_step_parts")
    args = ap.parse_args(argv)
    out = {"torch_threads": torch.get_num_threads()}
    if args.part in ("all", "split-bn"):
        out["split_bn"] = split_bn(args.repeats)
    if args.part in ("all", "prior-map"):
        out["prior_map"] = prior_map(args.repeats)
    print(json.dumps(out, indent=1))
    write_result(args.out, out, key=f"{args.part}, {torch.get_num_threads()} torch threads")
    return out


if __name__ == "__main__":
    main()
