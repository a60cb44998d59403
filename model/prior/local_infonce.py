r"""Local InfoNCE: MoCo's contrastive loss on superpixel-patch embeddings (QGNet eq. 2).

Each of the :math:`P` patches is a superpixel visible in both augmented views. Its query
embedding :math:`q_p` (mask-pooled from the query view) has one positive, the same
superpixel pooled from the key view by the momentum encoder, :math:`k_p`, and the
:math:`K` negatives of the *patch* queue :math:`\{n_j\}` (patch keys of earlier batches):

.. math::

    \ell_p = -\log \frac{\exp(q_p \cdot k_p / \tau)}
                        {\exp(q_p \cdot k_p / \tau) + \sum_{j=1}^{K} \exp(q_p \cdot n_j / \tau)},
    \qquad
    \mathcal{L}_{local} = \frac{\sum_p w_p \, \ell_p}{\sum_p w_p}

with :math:`w_p = 1` by default and :math:`w_p = 0` for padded (invalid) patches. As in
MoCo the negatives come from the queue only: other patches of the current batch are not
used as negatives (DetCon contrasts against all in-batch patches instead; see
``docs/prior.md``).

References
----------
.. [1] Liu et al., "Few-Shot Segmentation with Global and Local Contrastive Learning"
       (QGNet), eq. 2.
.. [2] Hénaff et al., "Efficient Visual Pretraining with Contrastive Detection" (DetCon),
       ICCV 2021: mask-pooled region embeddings, positives = same mask id in the other view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def local_infonce(
    q_patches: torch.Tensor,
    k_patches: torch.Tensor,
    queue: torch.Tensor,
    *,
    temperature: float = 0.2,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-level InfoNCE with a queue of patch negatives and optional per-patch weights.

    Parameters
    ----------
    q_patches : Tensor, P x D
        L2-normalised query patch embeddings (gradients flow here).
    k_patches : Tensor, P x D
        L2-normalised key patch embeddings; row ``p`` is the positive of ``q_patches[p]``
        (detached).
    queue : Tensor, K x D
        L2-normalised negative patch keys (detached).
    temperature : float, default 0.2
    weights : Tensor, P, optional
        Non-negative weight per patch, 0 for invalid (padded) patches. ``None``: all 1.

    Returns
    -------
    loss : Tensor, scalar (float32)
        ``sum_p w_p l_p / sum_p w_p``; exactly 0 (still differentiable) when every
        weight is 0.
    logits : Tensor, P x (1+K) (float32)
        Column 0 is the positive.
    """
    if (q_patches.shape != k_patches.shape or q_patches.dim() != 2 or queue.dim() != 2
            or queue.shape[1] != q_patches.shape[1]):
        raise ValueError(f"expected q_patches, k_patches: P x D and queue: K x D, got "
                         f"{tuple(q_patches.shape)}, {tuple(k_patches.shape)}, {tuple(queue.shape)}")
    if weights is not None and weights.shape != q_patches.shape[:1]:
        raise ValueError(f"weights must have shape ({q_patches.shape[0]},), got {tuple(weights.shape)}")
    # fp32 logits even under bf16 autocast (see global_infonce).
    with torch.autocast(q_patches.device.type, enabled=False):
        q = q_patches.float()
        k = k_patches.detach().float()
        queue = queue.detach().float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # l_pos: P x 1
        l_neg = q @ queue.t()  # l_neg: P x K
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # logits: P x (1+K)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        per_patch = F.cross_entropy(logits, labels, reduction="none")  # per_patch: P
        if weights is None:
            weights = torch.ones_like(per_patch)
        weights = weights.detach().float()
        # clamp: an all-invalid batch gives 0 / 1e-12 = 0 rather than NaN.
        loss = (weights * per_patch).sum() / weights.sum().clamp_min(1e-12)
        return loss, logits
