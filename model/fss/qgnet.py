"""QGNet: PFENet with a query-only prior region map from a second, frozen backbone.

One episode: a query image, K support images of one class with their binary masks.
Shapes below are for ResNet-50 at 473 x 473 (bridge features 60 x 60, stride 8)::

    net = QGNet(backbone=freeze(build_backbone("resnet50", weights=...)),
                prior_backbone=freeze(build_backbone("resnet50", weights=prior_export)))
    out = net(query, supports, support_masks, return_maps=True)
    loss = net.loss(out["logits"], out["aux"], target)

    query           N x 3 x 473 x 473                ImageNet-normalised
    supports        N x K x 3 x 473 x 473
    support_masks   N x K x 473 x 473               1 fg, 0 bg, 255 ignore (-> bg)
    F(query)        layer2 N x 512, layer3 N x 1024, layer4 N x 2048, all 60 x 60
    bridge          cat(layer3, layer2) -> 1x1 conv 1536->256, ReLU, Dropout2d(0.5)
    prototype       masked average of the support bridge features       N x 256 x 1 x 1
    guided map      PFENet prior: max cosine(query layer4, masked support layer4)
                                                                         N x 1 x 60 x 60
    prior map       QGNet prior: max cosine(proj(F layer4), proj(Fp layer4)), query only
                                                                         N x 1 x 60 x 60
    FEM             bins 60, 30, 15, 8; merge 514 -> 256 per bin ...    N x 2 x 60 x 60
    logits          bilinear to the input size                           N x 2 x 473 x 473

Defaults (PFENet PASCAL / QGNet's released code): ``reduce_dim=256``,
``pyramid_bins=(60, 30, 15, 8)``, ``dropout=0.5`` (bridge and prior projections),
0.1 in the classifiers, auxiliary loss weight 1.0, cosine eps 1e-7, prototype eps 0.0005.
Every decision and deviation is listed in ``docs/network.md``.

References
----------
.. [1] Tian et al., "Prior Guided Feature Enrichment Network for Few-Shot Segmentation"
       (PFENet), TPAMI 2020; dvlab-research/PFENet ``model/PFENet.py``.
.. [2] Liu et al., "Few-Shot Segmentation with Global and Local Contrastive Learning"
       (QGNet); liuweide01/QGNet-Few-shot-segmentation ``model/PFENet_QGNet.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import freeze

__all__ = [
    "COSINE_EPS",
    "DEFAULT_FRACTIONS",
    "FROZEN_BN",
    "PROTOTYPE_EPS",
    "QGNet",
    "cosine_max_map",
    "guided_region_map",
    "masked_average_pool",
    "minmax_normalise",
    "resolve_bins",
]

COSINE_EPS = 1e-7  # PFENet / QGNet: cosine denominator and min-max denominator
PROTOTYPE_EPS = 0.0005  # PFENet Weighted_GAP: sum(f * m) / (sum(m) + 0.0005)
DEFAULT_FRACTIONS = (1.0, 0.5, 0.25, 0.125)  # PFENet's COCO config (fractions of the feature size)
# BatchNorm of the two frozen backbones while training: "eval" (running statistics, never
# updated; HSNet, BAM) or "reference" (batch statistics, running statistics drift: PFENet's
# and the QGNet authors' train.py call model.train() and never freeze BN). docs/network.md.
FROZEN_BN = ("eval", "reference")


# --------------------------------------------------------------------------------------
# Pure functions (known answers in tests/model/fss/test_qgnet.py)
# --------------------------------------------------------------------------------------
def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners=True (PFENet everywhere); a no-op when the size matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def masked_average_pool(feat: torch.Tensor, mask: torch.Tensor, *, eps: float = PROTOTYPE_EPS) -> torch.Tensor:
    """The category guider (PFENet's ``Weighted_GAP``): ``sum(f * m) / (sum(m) + eps)``.

    Parameters
    ----------
    feat : Tensor, B x C x h x w
    mask : Tensor, B x 1 x h x w
        Soft foreground mask in [0, 1] at the feature size.
    eps : float, default 0.0005

    Returns
    -------
    Tensor, B x C x 1 x 1
        Computed in float32 (also under autocast).
    """
    with torch.autocast(feat.device.type, enabled=False):
        f, m = feat.float(), mask.float()
        num = (f * m).sum(dim=(2, 3), keepdim=True)  # B x C x 1 x 1
        area = m.sum(dim=(2, 3), keepdim=True) + eps  # B x 1 x 1 x 1
        return num / area


def minmax_normalise(x: torch.Tensor, *, eps: float = COSINE_EPS) -> torch.Tensor:
    """Per-row min-max: ``(x - min) / (max - min + eps)`` over the last dimension.

    A constant row gives 0 (not NaN).
    """
    lo = x.min(dim=-1, keepdim=True).values
    hi = x.max(dim=-1, keepdim=True).values
    return (x - lo) / (hi - lo + eps)


def cosine_max_map(query: torch.Tensor, keys: torch.Tensor, *, eps: float = COSINE_EPS) -> torch.Tensor:
    """For every query position, the best cosine similarity over all key positions,
    min-max normalised per image (PFENet's prior and QGNet's prior region map).

    ``sim[n, p] = max_k <q_p, k_k> / (|q_p| |k_k| + eps)`` (computed as the product of the
    vectors divided by ``|v| + eps`` each, one bmm: same values to ~1e-7), then per image
    ``(sim - min) / (max - min + eps)``. Zero key vectors (masked-out support positions)
    give similarity 0 to everything, exactly as in PFENet (they are not removed).

    Parameters
    ----------
    query : Tensor, N x C x h x w
    keys : Tensor, N x C x hk x wk
        Any spatial size; same channels.
    eps : float, default 1e-7

    Returns
    -------
    Tensor, N x 1 x h x w, float32, values in [0, 1]
        Always computed in float32 (autocast is switched off inside).
    """
    n, c, h, w = query.shape
    with torch.autocast(query.device.type, enabled=False):
        q = query.float().flatten(2)  # N x C x P
        k = keys.float().flatten(2).transpose(1, 2)  # N x Pk x C
        # Normalise first, then one bmm: autograd keeps only the N x C x P inputs, not the
        # N x Pk x P numerator and denominator of the quotient (0.8 GB at 473 / batch 8).
        # 1 / ((|q| + eps)(|k| + eps)) differs from PFENet's 1 / (|q||k| + eps) by
        # eps (|q| + |k|) / (|q||k|) relative (~1e-7 for unit-scale features); zero vectors
        # (masked-out support positions) still give 0.
        q = q / (q.norm(p=2, dim=1, keepdim=True) + eps)  # N x C x P, unit columns
        k = k / (k.norm(p=2, dim=2, keepdim=True) + eps)  # N x Pk x C, unit rows
        sim = torch.bmm(k, q)  # N x Pk x P (TF32 on CUDA when enabled, see model.speed)
        sim = sim.max(dim=1).values  # N x P: best key for every query position
        sim = minmax_normalise(sim, eps=eps)
    return sim.reshape(n, 1, h, w)


def guided_region_map(
    query_high: torch.Tensor, support_high: torch.Tensor, support_mask: torch.Tensor, *, eps: float = COSINE_EPS
) -> torch.Tensor:
    """PFENet's training-free prior ("guided region map" in QGNet).

    The support high-level features (already computed from mask-multiplied mid-level
    features) are masked again with the support mask resized to their size, then
    :func:`cosine_max_map` against the query high-level features.

    Parameters
    ----------
    query_high : Tensor, N x C x h x w
    support_high : Tensor, N x C x hs x ws
    support_mask : Tensor, N x 1 x Hm x Wm
        Binary (or soft) foreground mask at any size (PFENet passes the full-resolution
        mask); resized bilinearly (align_corners=True) to hs x ws.

    Returns
    -------
    Tensor, N x 1 x h x w, float32 in [0, 1]
    """
    m = _resize(support_mask.float(), support_high.shape[-2:])  # N x 1 x hs x ws
    return cosine_max_map(query_high, support_high * m, eps=eps)


def resolve_bins(bins: Sequence[float], feat_hw: Sequence[int]) -> list[tuple[int, int]]:
    """PFENet's pyramid bins for a feature map of size ``feat_hw``.

    A bin > 1 is an absolute size (square, e.g. 60 for 473 inputs); a bin <= 1 is a
    fraction of the feature size, truncated as PFENet does (``int(size * f)``), never
    below 1. Fractions apply to height and width separately (PFENet uses the height
    for both; the same for square inputs).

    >>> resolve_bins((1.0, 0.5, 0.25, 0.125), (81, 81))  # COCO, 641 x 641
    [(81, 81), (40, 40), (20, 20), (10, 10)]
    """
    out = []
    for b in bins:
        if b <= 1:
            out.append((max(1, int(feat_hw[0] * b)), max(1, int(feat_hw[1] * b))))
        else:
            out.append((int(b), int(b)))
    return out


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------
def _conv1x1_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, bias=False), nn.ReLU(inplace=True))


def _two_conv3x3(dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
    )


def _classifier(dim: int, classes: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=0.1),
        nn.Conv2d(dim, classes, kernel_size=1),
    )


class QGNet(nn.Module):
    """Few-shot segmentation network: PFENet + QGNet's prior region map.

    Parameters
    ----------
    backbone : Backbone
        Feature extractor F (see ``model.backbones``); frozen here with ``freeze``.
    prior_backbone : Backbone or None
        The prior extractor Fp (QGNet: a contrastively pretrained ResNet-50), frozen
        here. Required when ``use_prior_map``; ignored (and not stored) otherwise.
    use_prior_map : bool, default True
        ``False`` gives the PFENet-equivalent baseline (merge layers take 513 channels).
    reduce_dim : int, default 256
        Width of every new layer.
    pyramid_bins : sequence or None, default (60, 30, 15, 8)
        FEM bins: sizes > 1 are absolute (PFENet PASCAL, 473 input), sizes <= 1 are
        fractions of the bridge feature size (PFENet COCO). ``None``: the fractions
        (1, 0.5, 0.25, 0.125), resolved at forward time from the actual feature size
        (or once from ``train_size``).
    dropout : float, default 0.5
        Dropout2d after the bridge reductions and the prior projections.
    train_size : int or (int, int), optional
        Only with fractional bins: resolve them once against the bridge feature size of
        a ``train_size`` input (``ceil(size / stride)``), so that other input sizes keep
        the training bins, as fixed bins do.
    frozen_bn : {"eval", "reference"}, default "eval"
        BatchNorm of both frozen backbones under ``.train()``. ``"eval"``: running
        statistics, never updated (HSNet, BAM). ``"reference"``: as PFENet's and the QGNet
        authors' ``train.py`` (``model.train()``, BN never frozen): batch statistics while
        training and the running statistics drift to the training data; the K support
        images then pass the backbone one shot at a time, as the reference's loop does
        (a batch of N per BN call, not N x K). Evaluation (``.eval()``) uses the running
        statistics either way.

    Notes
    -----
    Both backbones run under ``no_grad``; no parameter of theirs ever gets a gradient.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        prior_backbone: nn.Module | None,
        use_prior_map: bool = True,
        reduce_dim: int = 256,
        pyramid_bins: Sequence[float] | None = (60, 30, 15, 8),
        dropout: float = 0.5,
        train_size: int | Sequence[int] | None = None,
        frozen_bn: str = "eval",
    ) -> None:
        super().__init__()
        if frozen_bn not in FROZEN_BN:
            raise ValueError(f"frozen_bn must be one of {FROZEN_BN}, got {frozen_bn!r}")
        self.frozen_bn = frozen_bn
        if use_prior_map and prior_backbone is None:
            raise ValueError(
                "use_prior_map=True needs a prior_backbone (the frozen prior extractor Fp, e.g. "
                "build_backbone('resnet50', weights=PRIOR_EXPORT)); pass use_prior_map=False for the "
                "PFENet-equivalent baseline"
            )
        bn_train = frozen_bn == "reference"
        self.backbone = freeze(backbone, bn_train=bn_train)
        self.prior_backbone = freeze(prior_backbone, bn_train=bn_train) if use_prior_map else None
        self.use_prior_map = bool(use_prior_map)
        self.reduce_dim = int(reduce_dim)
        self.mid_stages = tuple(backbone.mid_stages)
        self.high_stage = backbone.high_stage
        names = list(backbone.stage_names)
        # The stage whose (masked) output feeds the high stage: layer3 for every backbone.
        self.pre_high_stage = names[names.index(self.high_stage) - 1]
        if self.pre_high_stage not in self.mid_stages:
            raise ValueError(f"backbone {backbone!r}: the stage before {self.high_stage!r} must be a mid stage")

        fractional = pyramid_bins is None or all(b <= 1 for b in pyramid_bins)
        bins = tuple(DEFAULT_FRACTIONS if pyramid_bins is None else pyramid_bins)
        if train_size is not None and fractional:
            ts = (train_size, train_size) if isinstance(train_size, int) else tuple(train_size)
            stride = backbone.strides[self.mid_stages[-1]]
            bins = tuple(b for b, _ in resolve_bins(bins, (math.ceil(ts[0] / stride), math.ceil(ts[1] / stride))))
        self.pyramid_bins = bins
        self.train_size = train_size

        d = self.reduce_dim
        fea_dim = sum(backbone.channels[s] for s in self.mid_stages)  # 1536 for ResNet-50
        self.down_query = nn.Sequential(
            nn.Conv2d(fea_dim, d, kernel_size=1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=dropout)
        )
        self.down_supp = nn.Sequential(
            nn.Conv2d(fea_dim, d, kernel_size=1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=dropout)
        )
        if self.use_prior_map:
            c_f = backbone.channels[self.high_stage]
            c_p = prior_backbone.channels[prior_backbone.high_stage]
            self.prior_proj = nn.Sequential(  # F side (authors: down_learn_super)
                nn.Conv2d(c_f, d, kernel_size=3, padding=1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=dropout)
            )
            self.prior_proj_p = nn.Sequential(  # Fp side (authors: down_learn_unsuper)
                nn.Conv2d(c_p, d, kernel_size=3, padding=1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=dropout)
            )
        self.merge_channels = 2 * d + 1 + int(self.use_prior_map)  # 514 (QGNet) or 513 (PFENet)
        nb = len(self.pyramid_bins)
        self.init_merge = nn.ModuleList([_conv1x1_relu(self.merge_channels, d) for _ in range(nb)])
        self.alpha_conv = nn.ModuleList([_conv1x1_relu(2 * d, d) for _ in range(nb - 1)])
        self.beta_conv = nn.ModuleList([_two_conv3x3(d) for _ in range(nb)])
        self.inner_cls = nn.ModuleList([_classifier(d) for _ in range(nb)])
        self.res1 = _conv1x1_relu(d * nb, d)
        self.res2 = _two_conv3x3(d)
        self.cls = _classifier(d)

    # ---------------------------------------------------------------------- helpers
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter except those of the two frozen backbones."""
        frozen = {id(p) for m in (self.backbone, self.prior_backbone) if m is not None for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def _support_features(self, sx: torch.Tensor, sm: torch.Tensor, k_shot: int):
        """Support stages up to the one before the high stage, and the high stage of the
        masked features (PFENet): ``(dict stage -> NK x C x h x w, NK x C4 x h4 x w4)``.

        With BatchNorm in training mode (``frozen_bn="reference"`` while training) the
        statistics depend on the batch, so the shots go through one at a time (a batch of
        N each, in shot order), as the reference's ``for i in range(self.shot)`` loop;
        otherwise all N x K images in one pass (the same numbers)."""
        def run(x, m):
            f = self.backbone.forward_stages(x, upto=self.pre_high_stage)
            m_pre = _resize(m, f[self.pre_high_stage].shape[-2:])  # B x 1 x h3 x w3
            return f, self.backbone.run_stage(self.high_stage, f[self.pre_high_stage] * m_pre)

        batch_stats = self.frozen_bn == "reference" and self.training
        if not batch_stats or k_shot == 1:
            return run(sx, sm)
        n = sx.shape[0] // k_shot
        shots = [run(sx.view(n, k_shot, *sx.shape[1:])[:, i], sm.view(n, k_shot, *sm.shape[1:])[:, i])
                 for i in range(k_shot)]  # each: N images of shot i

        def interleave(ts):  # K tensors N x ... -> NK x ... in (episode, shot) order
            return torch.stack(ts, dim=1).flatten(0, 1)

        feats = {name: interleave([f[name] for f, _ in shots]) for name in shots[0][0]}
        return feats, interleave([h for _, h in shots])

    def bins_for(self, feat_hw: Sequence[int]) -> list[tuple[int, int]]:
        """The FEM bins used for a bridge feature map of size ``feat_hw``."""
        return resolve_bins(self.pyramid_bins, feat_hw)

    def _bridge(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mid stages resized to the last one's size, concatenated deepest first (PFENet:
        cat(layer3, layer2)): B x sum(C_mid) x h x w."""
        size = feats[self.mid_stages[-1]].shape[-2:]
        return torch.cat([_resize(feats[s], size) for s in reversed(self.mid_stages)], dim=1)

    def prior_region_map(self, query: torch.Tensor, query_high: torch.Tensor | None = None) -> torch.Tensor:
        """QGNet's prior region map from the query alone: N x 1 x h4 x w4 (F's high grid).

        ``max over Fp positions of cosine(prior_proj(F high), prior_proj_p(Fp high))``,
        per-image min-max. ``query_high`` (F's high-level query features) is recomputed
        when not given.
        """
        if not self.use_prior_map:
            raise RuntimeError("this QGNet was built with use_prior_map=False")
        with torch.no_grad():
            if query_high is None:
                query_high = self.backbone(query)[self.high_stage]
            prior_high = self.prior_backbone(query)[self.prior_backbone.high_stage]  # N x Cp x h' x w'
        q = self.prior_proj(query_high)  # N x d x h4 x w4
        k = self.prior_proj_p(prior_high)  # N x d x h' x w'
        return cosine_max_map(q, k)

    # ---------------------------------------------------------------------- forward
    def forward(
        self,
        query: torch.Tensor,
        supports: torch.Tensor,
        support_masks: torch.Tensor,
        *,
        return_maps: bool = False,
    ) -> torch.Tensor | dict[str, object]:
        """One batch of episodes.

        Parameters
        ----------
        query : Tensor, N x 3 x H x W
            ImageNet-normalised. (H - 1) % 8 == 0 (473, 641) matches PFENet's grids
            exactly; other sizes work.
        supports : Tensor, N x K x 3 x Hs x Ws
        support_masks : Tensor, N x K x Hs x Ws
            1 foreground, 0 background, 255 ignore (treated as background).
        return_maps : bool, default False
            Return a dict with the auxiliary logits and both region maps as well.

        Returns
        -------
        Tensor, N x 2 x H x W
            Logits at the input size, or with ``return_maps`` a dict: ``logits``,
            ``aux`` (list of N x 2 x b x b, one per bin), ``guided_map`` (N x 1 x h x w),
            ``prior_map`` (N x 1 x h x w or None), h x w = the bridge feature size; also
            ``prototypes`` (N x K x d x 1 x 1, per shot) and ``prototype`` (their mean).
        """
        n, _, in_h, in_w = query.shape
        if supports.dim() != 5 or support_masks.dim() != 4 or supports.shape[:2] != support_masks.shape[:2]:
            raise ValueError(
                f"expected supports N x K x 3 x H x W and support_masks N x K x H x W, got "
                f"{tuple(supports.shape)} and {tuple(support_masks.shape)}"
            )
        k_shot = supports.shape[1]

        # 1. Frozen features (no grad).
        with torch.no_grad():
            qf = self.backbone(query)  # dict stage -> N x C x h x w
            sx = supports.flatten(0, 1)  # NK x 3 x Hs x Ws
            sm = (support_masks.flatten(0, 1) == 1).to(sx.dtype).unsqueeze(1)  # NK x 1 x Hs x Ws
            sf, s_high = self._support_features(sx, sm, k_shot)  # s_high: NK x C4 x h4 x w4
            q_bridge_in = self._bridge(qf)  # N x 1536 x h x w
            s_bridge_in = self._bridge(sf)  # NK x 1536 x hs x ws
        h, w = q_bridge_in.shape[-2:]

        # 2. Bridge features and prototypes (category guider), averaged over shots.
        q_feat = self.down_query(q_bridge_in)  # N x d x h x w
        s_feat = self.down_supp(s_bridge_in)  # NK x d x hs x ws
        m_bridge = _resize(sm, s_feat.shape[-2:])  # NK x 1 x hs x ws (= m_pre for every backbone here)
        protos = masked_average_pool(s_feat, m_bridge).view(n, k_shot, -1, 1, 1)  # N x K x d x 1 x 1
        proto = protos.mean(dim=1)  # N x d x 1 x 1

        # 3. Guided region map (PFENet prior), one per shot, averaged.
        q_high = qf[self.high_stage]  # N x C4 x h4 x w4
        s_high = s_high.view(n, k_shot, *s_high.shape[1:])
        sm_k = sm.view(n, k_shot, 1, *sm.shape[-2:])
        guided = [_resize(guided_region_map(q_high, s_high[:, i], sm_k[:, i]), (h, w)) for i in range(k_shot)]
        guided = torch.stack(guided, dim=0).mean(dim=0)  # N x 1 x h x w

        # 4. Prior region map (QGNet), from the query alone.
        prior = None
        if self.use_prior_map:
            prior = _resize(self.prior_region_map(query, q_high), (h, w))  # N x 1 x h x w

        # 5. Feature enrichment module.
        aux_out: list[torch.Tensor] = []
        pyramid: list[torch.Tensor] = []
        for idx, (bh, bw) in enumerate(self.bins_for((h, w))):
            q_bin = F.adaptive_avg_pool2d(q_feat, (bh, bw))  # N x d x bh x bw
            parts = [q_bin, proto.to(q_bin.dtype).expand(-1, -1, bh, bw), _resize(guided, (bh, bw)).to(q_bin.dtype)]
            if prior is not None:
                parts.append(_resize(prior, (bh, bw)).to(q_bin.dtype))
            x = self.init_merge[idx](torch.cat(parts, dim=1))  # N x d x bh x bw (514 or 513 in)
            if idx >= 1:
                prev = _resize(pyramid[idx - 1], (bh, bw))
                x = self.alpha_conv[idx - 1](torch.cat([x, prev], dim=1)) + x  # N x d x bh x bw
            x = self.beta_conv[idx](x) + x
            if return_maps:
                aux_out.append(self.inner_cls[idx](x))  # N x 2 x bh x bw
            pyramid.append(_resize(x, (h, w)))  # N x d x h x w
        x = self.res1(torch.cat(pyramid, dim=1))  # N x d x h x w
        x = self.res2(x) + x
        logits = _resize(self.cls(x), (in_h, in_w))  # N x 2 x H x W

        if not return_maps:
            return logits
        return {"logits": logits, "aux": aux_out, "guided_map": guided, "prior_map": prior,
                "prototypes": protos, "prototype": proto}

    # ---------------------------------------------------------------------- loss
    @staticmethod
    def loss(
        logits: torch.Tensor,
        aux: Sequence[torch.Tensor],
        target: torch.Tensor,
        *,
        aux_weight: float = 1.0,
        return_parts: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PFENet's loss: ``CE(logits, y) + aux_weight * mean_b CE(up(aux_b), y)``, ignore 255.

        Logits (when not already there) and every auxiliary output are resized
        bilinearly (align_corners=True) to the target size first.

        Parameters
        ----------
        logits : Tensor, N x 2 x h x w
        aux : list of Tensor, N x 2 x b x b
        target : Tensor, N x H x W, integer labels 0/1/255
        aux_weight : float, default 1.0
        return_parts : bool, default False
            Return ``(total, main, aux_mean)`` instead of the total.
        """
        target = target.long()
        size = target.shape[-2:]
        main = F.cross_entropy(_resize(logits, size).float(), target, ignore_index=255)
        if len(aux):
            aux_loss = torch.stack(
                [F.cross_entropy(_resize(a, size).float(), target, ignore_index=255) for a in aux]
            ).mean()
        else:
            aux_loss = torch.zeros_like(main)
        total = main + aux_weight * aux_loss
        return (total, main, aux_loss) if return_parts else total
