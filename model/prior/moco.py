r"""MoCo v2 with a global and a local (superpixel-patch) contrast: the prior pretraining.

The query encoder is ``backbone + global head + local head``; the key encoder is a deep
copy updated by momentum, :math:`\theta_k \leftarrow m\,\theta_k + (1-m)\,\theta_q`, never
by gradients. For a batch of two views (query ``im_q``, key ``im_k``) of N images and
their superpixel maps:

1. ``f_q = backbone_q(im_q)[high_stage]`` (N x C x h x w, 7 x 7 for 224 crops, stride 32).
2. Global: average-pool, MLP, L2-normalise -> ``q`` (N x D). Local: sample up to
   ``patches_per_image`` superpixels visible in both views (the window and slot filling of
   :mod:`model.prior.patch_rule`), then either mask-average-pool ``f_q`` per patch
   (``local_patches="pooled"``, DetCon style) or crop each patch's bounding box from the
   view, resize it and encode it as an input of its own (``"crop"``, the paper's reading,
   :mod:`model.prior.patch_crops`), MLP, L2-normalise -> ``q_loc`` (N x P x D).
3. Momentum update of the key encoder, then (no grad) shuffle the key batch (and its patch
   masks or crops) for BN, encode, unshuffle -> ``k`` (N x D), ``k_loc`` (N x P x D).
4. ``L = L_global(q, k, queue) + L_local(q_loc, k_loc, patch_queue)`` (QGNet eq. 1 + 2,
   see :mod:`model.prior.global_infonce`, :mod:`model.prior.local_infonce`), positive at logit 0, temperature 0.2.
5. Enqueue ``k`` and the valid ``k_loc`` rows (gathered over ranks under DDP).

Shuffle-BN (MoCo sec. 3.3) stops a model from cheating through batch statistics shared
by a query and its key. ``shuffle="ddp"``: MoCo's cross-rank shuffle (each rank's BN sees
a random subset of the global key batch). ``shuffle="split-bn"`` (single process, default):
every BatchNorm2d of both encoders becomes a :class:`SplitBatchNorm` over
``split_bn_groups`` groups (simulating 8 GPUs, as MoCo's single-GPU CIFAR demo does for
both encoders) and the key batch is permuted before the key encoder, so a query and its
key are normalised with different groups. ``shuffle="none"``: plain BN, no shuffle (MoCo's
demo reports about -4 % kNN accuracy without shuffle-BN).

Defaults (MoCo v2): ``dim=128``, MLP hidden = backbone channels (2048 for ResNet-50),
``queue_size=65536``, ``momentum=0.999``, ``temperature=0.2``.

References
----------
.. [1] He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
       CVPR 2020 (facebookresearch/moco ``moco/builder.py``).
.. [2] Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020.
.. [3] Hénaff et al., "Efficient Visual Pretraining with Contrastive Detection", ICCV 2021.
.. [4] Liu et al., "Few-Shot Segmentation with Global and Local Contrastive Learning".
"""
from __future__ import annotations

import copy
import functools
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.prior.global_infonce import global_infonce
from model.prior.local_infonce import local_infonce
from model.prior.patch_crops import crop_patches, patch_boxes
from model.prior.patch_rule import FILLS, default_window, fill_slots
from model.prior.patches import patch_masks, pool_with_masks, sample_patch_ids
from model.prior.queue import RingQueue
from model.utils import all_gather_variable

LOSSES = ("both", "global", "local")
SHUFFLES = ("split-bn", "ddp", "none")
LOCAL_PATCHES = ("pooled", "crop")  # DetCon-style pooling from the view | the paper's crops


# ------------------------------------------------------------------------------ split BN
def _largest_divisor(n: int, groups: int) -> int:
    return max(d for d in range(1, min(n, groups) + 1) if n % d == 0)


@functools.lru_cache(maxsize=None)
def _warn_groups(n: int, groups: int, used: int) -> None:
    warnings.warn(f"SplitBatchNorm: batch of {n} is not divisible by {groups} groups; using {used} "
                  f"groups of {n // used} for this batch size", stacklevel=3)


def mean_pairwise_cosine(z: torch.Tensor, *, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine over the pairs i != j of the L2-normalised rows of ``z`` (M x D):
    ``(|sum z|^2 - M) / (M (M - 1))``, O(M D); 0 for fewer than two rows.

    ``weights`` (M bool, optional): only those rows, as ``mean_pairwise_cosine(z[weights])``
    but without reading their count on the host (no sync).
    """
    if weights is None:
        m = z.shape[0]
        if m < 2:
            return z.new_zeros((), dtype=torch.float32)
        s = F.normalize(z.float(), dim=1).sum(0)
        return (s.dot(s) - m) / (m * (m - 1))
    w = weights.to(torch.float32)  # w: M in {0, 1}
    m = w.sum()
    s = (F.normalize(z.float(), dim=1) * w.unsqueeze(1)).sum(0)  # s: D
    return torch.where(m >= 2, (s.dot(s) - m) / (m * (m - 1)).clamp_min(1), torch.zeros_like(m))


class _SplitBNChannelsLast(torch.autograd.Function):
    """Training-mode split BN of a channels_last N x C x H x W tensor, with no layout change.

    Channels_last memory is N x H x W x C, so ``x.permute(0, 2, 3, 1).view(N/G, G, H, W, C)``
    is a view whose (b, c) slice over dims (0, 2, 3) holds exactly group b's samples of
    channel c (sample a*G + b is in group b, as in :class:`SplitBatchNorm`'s NCHW path).
    Statistics and the affine map are computed on that view, in fp32 (also for bf16
    inputs), and the result is written in the same order: channels_last again.
    Backward is BN's analytic gradient per (group, channel); only the input (in its own
    dtype) and G x C statistics are kept for it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, g: int, eps: float):
        n, c, h, w = x.shape
        x5 = x.permute(0, 2, 3, 1).view(n // g, g, h, w, c)  # x5: N/G x G x H x W x C (a view)
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics (fp64 stays fp64)
        var, mean = torch.var_mean(x5.to(acc), dim=(0, 2, 3), correction=0)  # var, mean: G x C
        invstd = torch.rsqrt(var + eps)
        wt = weight.to(acc) if weight is not None else torch.ones_like(mean[0])  # wt: C
        scale = wt * invstd  # scale: G x C
        shift = (bias.to(acc) if bias is not None else 0.0) - mean * scale  # shift: G x C
        y5 = torch.addcmul(shift.view(1, g, 1, 1, c), x5, scale.view(1, g, 1, 1, c))
        ctx.save_for_backward(x, mean, invstd, wt)
        ctx.g, ctx.has_w, ctx.has_b = g, weight is not None, bias is not None
        y = y5.to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2)  # y: N x C x H x W, channels_last
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        x, mean, invstd, wt = ctx.saved_tensors
        g = ctx.g
        n, c, h, w = x.shape
        m = (n // g) * h * w  # samples per (group, channel)
        acc = mean.dtype
        x5 = x.permute(0, 2, 3, 1).view(n // g, g, h, w, c).to(acc)
        gy5 = gy.permute(0, 2, 3, 1).reshape(n // g, g, h, w, c).to(acc)
        sum_g = gy5.sum(dim=(0, 2, 3))  # sum_g: G x C
        dot = invstd * ((gy5 * x5).sum(dim=(0, 2, 3)) - mean * sum_g)  # sum gy * xhat: G x C
        scale = wt * invstd
        alpha = -scale * invstd * dot / m  # alpha, beta: G x C
        beta = -scale * sum_g / m - alpha * mean
        shp = (1, g, 1, 1, c)
        gx5 = gy5 * scale.view(shp) + x5 * alpha.view(shp) + beta.view(shp)
        gx = gx5.to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last
        gw = dot.sum(0) if ctx.has_w else None
        gb = sum_g.sum(0) if ctx.has_b else None
        return gx, gw, gb, None, None


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per group of the batch.

    Simulates ``num_splits`` GPUs in one process (MoCo's single-GPU demo): in training,
    sample ``i`` is normalised with the statistics of samples ``i mod G`` (G groups of N/G),
    and the running statistics are the mean over groups. In eval mode it is a plain
    BatchNorm2d. A channels_last input stays channels_last (no transposes, see
    :class:`_SplitBNChannelsLast`); an NCHW one goes through one ``F.batch_norm`` on a
    ``N/G x G*C x H x W`` view. Parameters and buffers are those of BatchNorm2d (same state_dict keys).
    If N is not divisible by ``num_splits`` the largest divisor of N below it is used
    (warned once per batch size).
    """

    def __init__(self, num_features: int, num_splits: int = 8, **kw) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = int(num_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits <= 1:
            return super().forward(x)
        n, c, h, w = x.shape
        g = _largest_divisor(n, self.num_splits)
        if g != self.num_splits:
            _warn_groups(n, self.num_splits, g)
        if g == 1:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats and self.running_mean is not None
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # channels_last (the CUDA default of the trainer): no NCHW round trip
            out, mean, var = _SplitBNChannelsLast.apply(x, self.weight, self.bias, g, self.eps)
            if track:
                with torch.no_grad():
                    m = (n // g) * h * w
                    unbiased = var.mean(0) * (m / max(m - 1, 1))
                    self.running_mean.mul_(1 - factor).add_(mean.mean(0), alpha=factor)
                    self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
            return out
        rm = self.running_mean.repeat(g) if track else None  # rm: G*C
        rv = self.running_var.repeat(g) if track else None
        weight = self.weight.repeat(g) if self.weight is not None else None
        bias = self.bias.repeat(g) if self.bias is not None else None
        # Sample a*G + b lands in channel block b: group b = samples b, b+G, b+2G, ...
        out = F.batch_norm(x.reshape(n // g, c * g, h, w), rm, rv, weight, bias,
                           True, factor, self.eps)  # out: N/G x G*C x h x w
        if track:
            with torch.no_grad():
                self.running_mean.copy_(rm.view(g, c).mean(0))
                self.running_var.copy_(rv.view(g, c).mean(0))
        return out.view(n, c, h, w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by a :class:`SplitBatchNorm`
    with the same state; returns the module (a new one if ``module`` itself is a BN)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SplitBatchNorm):
        new = SplitBatchNorm(module.num_features, num_splits, eps=module.eps,
                             momentum=module.momentum, affine=module.affine,
                             track_running_stats=module.track_running_stats)
        state = module.state_dict()
        if state:
            new = new.to(next(iter(state.values())).device)
        new.load_state_dict(state)
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new = convert_split_bn(child, num_splits)
        if new is not child:
            setattr(module, name, new)
    return module


# ------------------------------------------------------------------------------ encoder
def _mlp(cin: int, hidden: int, dim: int) -> nn.Sequential:
    """MoCo v2 projection head: Linear - ReLU - Linear (no BN)."""
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class _Encoder(nn.Module):
    """Backbone plus the global head (on the average-pooled high stage) and the local head
    (on mask-pooled patch features); a head is ``None`` when its loss is off."""

    def __init__(self, backbone: nn.Module, head_global: nn.Module | None,
                 head_local: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_global = head_global
        self.head_local = head_local

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[self.backbone.high_stage]  # N x C x h x w

    def embed_global(self, fmap: torch.Tensor) -> torch.Tensor:
        z = self.head_global(fmap.mean(dim=(2, 3)))  # z: N x D
        return F.normalize(z.float(), dim=1)

    def embed_local(self, fmap: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        pooled = pool_with_masks(fmap, masks)  # pooled: N x P x C (fp32)
        z = self.head_local(pooled)  # z: N x P x D
        return F.normalize(z.float(), dim=-1)

    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Patch crops N x P x 3 x s x s, encoded as inputs of their own -> N x P x D."""
        n, p = crops.shape[:2]
        f = self.features(crops.flatten(0, 1))  # f: NP x C x h' x w'
        z = self.head_local(f.mean(dim=(2, 3)))  # z: NP x D
        return F.normalize(z.float(), dim=-1).view(n, p, -1)


# ------------------------------------------------------------------------------ the model
class PriorMoCo(nn.Module):
    """MoCo v2 with global (image) and local (superpixel patch) InfoNCE.

    Parameters
    ----------
    backbone : nn.Module
        From ``build_backbone(name, weights=..., dilated=False)``: ``forward(x)`` returns a
        dict of stages; ``.high_stage`` names the one used, ``.channels`` its width.
    dim : int, default 128
        Embedding dimension D of both heads.
    mlp_hidden : int, optional
        Hidden width of both MLP heads; default the high stage's channels (2048 for
        ResNet-50, 512 for ResNet-18, 320 for EfficientNet-Lite0).
    queue_size, local_queue_size : int, default 65536
        Global and patch negative queues.
    momentum : float, default 0.999
    temperature : float, default 0.2
    loss : {"both", "global", "local"}, default "both"
        Which InfoNCE terms are summed into ``"loss"``; the unused head and queue are not
        built (no unused parameters under DDP).
    patches_per_image : int, optional
        Slots P per image; default 16 (DetCon's) for ``"pooled"``, 1 for ``"crop"`` (the
        paper's "one query patch").
    shuffle : {"split-bn", "ddp", "none"}, default "split-bn"
        Shuffle-BN variant (see the module docstring and ``docs/prior.md``).
    split_bn_groups : int, default 8
        Groups of :class:`SplitBatchNorm` for ``shuffle="split-bn"``.
    min_patch_pixels, max_patch_pixels : int, optional
        The area window (pixels, in each view) of :func:`~model.prior.patches.sample_patch_ids`;
        defaults :func:`~model.prior.patch_rule.default_window`: an eighth of a feature cell
        (128 for 224 crops at stride 32) and a sixteenth of the view (3,136).
    patch_fill : {"repeat", "none"}, default "repeat"
        Slots an image cannot fill with distinct usable ids: copies of its usable patches
        (:func:`~model.prior.patch_rule.fill_slots`) or left empty (weight 0).
    local_patches : {"pooled", "crop"}, default "pooled"
        ``"pooled"``: mask-average-pool the patch from the view's feature map (DetCon).
        ``"crop"``: crop the patch's bounding box from each view, resize it to
        ``patch_size`` and encode it as a separate input of the query / key encoder (the
        paper's section 4.1.2 read literally; :mod:`model.prior.patch_crops`).
    patch_size : int, optional
        Side of the crops of ``"crop"``; default half the view (112 at 224).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        dim: int = 128,
        mlp_hidden: int | None = None,
        queue_size: int = 65536,
        local_queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        loss: str = "both",
        patches_per_image: int | None = None,
        shuffle: str = "split-bn",
        split_bn_groups: int = 8,
        min_patch_pixels: int | None = None,
        max_patch_pixels: int | None = None,
        patch_fill: str = "repeat",
        local_patches: str = "pooled",
        patch_size: int | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
        if local_patches not in LOCAL_PATCHES:
            raise ValueError(f"local_patches must be one of {LOCAL_PATCHES}, got {local_patches!r}")
        if patch_fill not in FILLS:
            raise ValueError(f"patch_fill must be one of {FILLS}, got {patch_fill!r}")
        self.loss_mode = loss
        self.use_global = loss in ("both", "global")
        self.use_local = loss in ("both", "local")
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.local_patches = local_patches
        if patches_per_image is None:
            patches_per_image = 1 if local_patches == "crop" else 16
        self.patches_per_image = int(patches_per_image)
        self.shuffle = shuffle
        self.min_patch_pixels = min_patch_pixels
        self.max_patch_pixels = max_patch_pixels
        self.patch_fill = patch_fill
        self.patch_size = patch_size
        self._ddp_sizes_checked = False  # shuffle="ddp" reads the ranks' batch sizes once

        c = int(backbone.channels[backbone.high_stage])
        hidden = int(mlp_hidden or c)
        if shuffle == "split-bn":
            backbone = convert_split_bn(backbone, split_bn_groups)
        self.encoder_q = _Encoder(
            backbone,
            _mlp(c, hidden, dim) if self.use_global else None,
            _mlp(c, hidden, dim) if self.use_local else None,  # separate local head
        )
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.encoder_k.requires_grad_(False)  # updated by momentum only
        self.queue = RingQueue(dim, queue_size) if self.use_global else None
        self.local_queue = RingQueue(dim, local_queue_size) if self.use_local else None

    # -------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def _momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (parameters only, as MoCo; not BN buffers)."""
        pk = list(self.encoder_k.parameters())
        pq = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(pk, self.momentum)
        torch._foreach_add_(pk, pq, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _encode_keys(self, im_k: torch.Tensor, masks_k: torch.Tensor | None):
        """Key embeddings with Shuffle-BN: ``k`` N x D (or None), ``k_loc`` N x P x D (or None).

        ``masks_k``: the key view's patch masks N x P x h x w (``"pooled"``) or its patch
        crops N x P x 3 x s x s (``"crop"``); shuffled with the images."""
        n = im_k.shape[0]
        ddp = self.shuffle == "ddp" and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1
        if ddp:
            im_k, masks_k, idx_unshuffle = _ddp_shuffle(im_k, masks_k,
                                                        check=not self._ddp_sizes_checked)
            self._ddp_sizes_checked = True
        elif self.shuffle != "none":  # split-bn (and "ddp" in one process): in-batch shuffle
            perm = torch.randperm(n, device=im_k.device)  # perm: N
            im_k = im_k[perm]
            masks_k = masks_k[perm] if masks_k is not None else None
            idx_unshuffle = torch.argsort(perm)
        f_k = self.encoder_k.features(im_k)  # f_k: N x C x h x w (shuffled order)
        k = self.encoder_k.embed_global(f_k) if self.use_global else None  # k: N x D
        k_loc = None
        if self.use_local:  # k_loc: N x P x D
            k_loc = (self.encoder_k.embed_crops(masks_k) if self.local_patches == "crop"
                     else self.encoder_k.embed_local(f_k, masks_k))
        if ddp:
            k = _ddp_unshuffle(k, idx_unshuffle) if k is not None else None
            k_loc = _ddp_unshuffle(k_loc, idx_unshuffle) if k_loc is not None else None
        elif self.shuffle != "none":
            k = k[idx_unshuffle] if k is not None else None
            k_loc = k_loc[idx_unshuffle] if k_loc is not None else None
        return k, k_loc

    # -------------------------------------------------------------------------- forward
    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, map_q: torch.Tensor,
                map_k: torch.Tensor, *, max_id: int | None = None) -> dict[str, torch.Tensor]:
        """One contrastive step's losses (the caller runs backward and the optimiser).

        Parameters
        ----------
        im_q, im_k : Tensor, N x 3 x S x S
            The two augmented views (ImageNet-normalised).
        map_q, map_k : Tensor, N x S x S int64
            Their superpixel maps (0 = none); unused when ``loss="global"``.
        max_id : int, optional
            The largest id in both maps, known on the host (the batch's ``"max_id"`` from
            :func:`model.prior.data.collate`); without it the step reads it from the device
            (a host-device sync). With it, nothing in the step waits for the device.

        Returns
        -------
        dict of Tensor
            ``loss`` (with grad: ``loss_global + loss_local`` for ``"both"``),
            ``loss_global``, ``loss_local`` (detached; 0 when off), ``acc_global`` and
            ``acc_local`` (fraction in [0, 1] of rows whose positive has the largest logit;
            0 when off), ``n_patches`` (int64: valid patches in this rank's batch),
            ``cos_global`` / ``cos_local``: mean pairwise cosine between the batch's query
            embeddings (the collapse monitor of docs/prior_training.md: ~1 = all embeddings
            one vector; 0 when off).
        """
        n = im_q.shape[0]
        zero = im_q.new_zeros((), dtype=torch.float32)
        f_q = self.encoder_q.features(im_q)  # f_q: N x C x h x w
        q = self.encoder_q.embed_global(f_q) if self.use_global else None  # q: N x D
        masks_k = ids = valid = None
        if self.use_local:
            ids, valid, local_q, masks_k = self.local_inputs(im_q, im_k, map_q, map_k,
                                                             f_q.shape[-2:], max_id=max_id)
            if self.local_patches == "crop":  # local_q, masks_k: N x P x 3 x s x s crops
                q_loc = self.encoder_q.embed_crops(local_q)  # q_loc: N x P x D
            else:  # local_q, masks_k: N x P x h x w soft masks
                q_loc = self.encoder_q.embed_local(f_q, local_q)  # q_loc: N x P x D

        with torch.no_grad():
            self._momentum_update()  # before the keys, as MoCo
            k, k_loc = self._encode_keys(im_k, masks_k)

        out = {key: zero.clone() for key in ("loss_global", "loss_local", "acc_global", "acc_local",
                                             "cos_global", "cos_local")}
        out["n_patches"] = torch.zeros((), dtype=torch.long, device=im_q.device)
        total = zero
        if self.use_global:
            loss_g, logits = global_infonce(q, k, self.queue.keys.clone(),
                                            temperature=self.temperature)  # logits: N x (1+K)
            total = total + loss_g
            out["loss_global"] = loss_g.detach()
            out["acc_global"] = (logits.detach().argmax(dim=1) == 0).float().mean()
            out["cos_global"] = mean_pairwise_cosine(q.detach())
        if self.use_local:
            p = ids.shape[1]
            flat_valid = valid.reshape(n * p)  # flat_valid: NP
            loss_l, logits_l = local_infonce(
                q_loc.reshape(n * p, -1), k_loc.reshape(n * p, -1), self.local_queue.keys.clone(),
                temperature=self.temperature, weights=flat_valid.float())  # logits_l: NP x (1+K)
            total = total + loss_l
            out["loss_local"] = loss_l.detach()
            hit = (logits_l.detach().argmax(dim=1) == 0).float()  # hit: NP
            out["acc_local"] = (hit * flat_valid).sum() / flat_valid.sum().clamp_min(1)
            out["n_patches"] = flat_valid.sum()
            out["cos_local"] = mean_pairwise_cosine(q_loc.detach().reshape(n * p, -1),
                                                    weights=flat_valid)
        out["loss"] = total

        # Enqueue after the logits; keys of all ranks (equal batches under drop_last). The
        # patch keys travel with their valid flags (no host-side count, no sync).
        if self.use_global:
            self.queue.enqueue(all_gather_variable(k.contiguous(), sizes_equal=True))
        if self.use_local:
            p = ids.shape[1]
            self.local_queue.enqueue(
                all_gather_variable(k_loc.reshape(n * p, -1), sizes_equal=True),  # world*NP x D
                valid=all_gather_variable(valid.reshape(n * p), sizes_equal=True))  # world*NP
        return out

    def local_inputs(self, im_q: torch.Tensor, im_k: torch.Tensor, map_q: torch.Tensor,
                     map_k: torch.Tensor, feat_hw, *, max_id: int | None = None):
        """The sampled patches of both views: ``(ids, valid, local_q, local_k)``.

        ``ids``, ``valid``: N x P (after slot filling, a slot holds the id it shows).
        ``local_q`` / ``local_k``: the patch soft masks at feature resolution ``feat_hw``
        (N x P x h x w, ``"pooled"``) or the patch crops of each view (N x P x 3 x s x s,
        ``"crop"``; crop p of view q and crop p of view k show the same superpixel).
        """
        h, w = int(feat_hw[0]), int(feat_hw[1])
        lo, hi = default_window(map_q.shape[-2:], (h, w))
        lo = lo if self.min_patch_pixels is None else self.min_patch_pixels
        hi = hi if self.max_patch_pixels is None else self.max_patch_pixels
        ids, valid = sample_patch_ids(map_q, map_k, self.patches_per_image, min_pixels=lo,
                                      max_pixels=hi, max_id=max_id)  # ids, valid: N x P
        if self.local_patches == "crop":
            size = self.patch_size or max(1, im_q.shape[-1] // 2)
            local_q = crop_patches(im_q, patch_boxes(map_q, ids, valid), size)  # N x P x 3 x s x s
            local_k = crop_patches(im_k, patch_boxes(map_k, ids, valid), size)
        else:
            local_q = patch_masks(map_q, ids, valid, (h, w))  # local_q: N x P x h x w
            local_k = patch_masks(map_k, ids, valid, (h, w))
        if self.patch_fill == "repeat":  # empty slots show copies of the image's usable ones
            source, valid = fill_slots(valid)  # source: N x P slot indices
            rows = torch.arange(ids.shape[0], device=ids.device).view(-1, 1)
            ids, local_q, local_k = ids[rows, source], local_q[rows, source], local_k[rows, source]
        return ids, valid, local_q, local_k

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The key (momentum) encoder's backbone weights: what becomes the prior extractor.

        Same keys as the plain backbone's ``state_dict()`` (SplitBatchNorm keeps
        BatchNorm2d's names), so ``build_backbone(name, weights=file)`` loads it.
        """
        return {k: v.detach().clone() for k, v in self.encoder_k.backbone.state_dict().items()}


# ------------------------------------------------------------------------------ DDP shuffle
@torch.no_grad()
def _ddp_shuffle(im_k: torch.Tensor, masks_k: torch.Tensor | None, *, check: bool = True):
    """MoCo's batch shuffle across ranks: gather, permute (rank 0's permutation), keep this
    rank's slice. Needs the same batch size on every rank (``drop_last=True``); ``check``
    reads the ranks' sizes on the host (a sync; the model does it on its first step only)."""
    n = im_k.shape[0]
    world, rank = dist.get_world_size(), dist.get_rank()
    if check:
        sizes = [torch.zeros(1, dtype=torch.long, device=im_k.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([n], device=im_k.device))
        sizes = torch.cat(sizes).tolist()
        if any(s != n for s in sizes):
            raise RuntimeError(f"shuffle='ddp' needs the same batch size on every rank, got "
                               f"{sizes}; use a sampler with drop_last=True")
    im_all = all_gather_variable(im_k, sizes_equal=True)  # im_all: world*N x 3 x S x S
    masks_all = (all_gather_variable(masks_k, sizes_equal=True)
                 if masks_k is not None else None)  # masks_all: world*N x P x h x w
    perm = torch.randperm(world * n, device=im_k.device)  # perm: world*N
    dist.broadcast(perm, src=0)
    idx_unshuffle = torch.argsort(perm)
    mine = perm.view(world, n)[rank]  # mine: N (this rank's shuffled samples)
    masks = masks_all[mine] if masks_all is not None else None
    return im_all[mine], masks, idx_unshuffle


@torch.no_grad()
def _ddp_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Gather the shuffled embeddings (N x ...) of all ranks and take back this rank's rows."""
    world, rank = dist.get_world_size(), dist.get_rank()
    n = x.shape[0]
    x_all = all_gather_variable(x.contiguous(), sizes_equal=True)  # x_all: world*N x ...
    return x_all[idx_unshuffle.view(world, n)[rank]]
