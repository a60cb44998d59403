r"""Global InfoNCE: MoCo's contrastive loss on whole-image embeddings (QGNet eq. 1).

For a query embedding :math:`q`, its positive key :math:`k_+` (the other augmented view
of the same image, from the momentum encoder) and the :math:`K` keys in the queue
:math:`\{k_j\}` (other images, earlier batches), with temperature :math:`\tau`:

.. math::

    \mathcal{L}_{global} = -\log
        \frac{\exp(q \cdot k_+ / \tau)}
             {\exp(q \cdot k_+ / \tau) + \sum_{j=1}^{K} \exp(q \cdot k_j / \tau)}

averaged over the batch. This is a (1+K)-way cross-entropy whose correct class is the
positive, placed at index 0 (He et al., MoCo, Algorithm 1; MoCo v2 uses :math:`\tau=0.2`).

References
----------
.. [1] He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
       CVPR 2020.
.. [2] Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2),
       arXiv:2003.04297, 2020.
.. [3] Liu et al., "Few-Shot Segmentation with Global and Local Contrastive Learning"
       (QGNet), eq. 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def global_infonce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, *, temperature: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo InfoNCE between queries, their positive keys and a queue of negatives.

    Parameters
    ----------
    q : Tensor, N x D
        L2-normalised query embeddings (gradients flow here).
    k : Tensor, N x D
        L2-normalised positive keys, row ``i`` is the positive of ``q[i]`` (detached).
    queue : Tensor, K x D
        L2-normalised negative keys (detached).
    temperature : float, default 0.2
        :math:`\\tau` (MoCo v2).

    Returns
    -------
    loss : Tensor, scalar (float32)
        Mean cross-entropy with the positive at index 0.
    logits : Tensor, N x (1+K) (float32)
        ``[q.k+, q.queue] / temperature``; column 0 is the positive (use it for top-1
        accuracy: ``(logits.argmax(1) == 0)``).

    Examples
    --------
    >>> q = F.normalize(torch.randn(4, 8), dim=1); k = F.normalize(torch.randn(4, 8), dim=1)
    >>> loss, logits = global_infonce(q, k, F.normalize(torch.randn(16, 8), dim=1))
    >>> tuple(logits.shape)
    (4, 17)
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"expected q, k: N x D and queue: K x D, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(queue.shape)}")
    # fp32 logits even under bf16 autocast: a softmax over 65k negatives needs the precision.
    with torch.autocast(q.device.type, enabled=False):
        q = q.float()
        k = k.detach().float()
        queue = queue.detach().float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # l_pos: N x 1
        l_neg = q @ queue.t()  # l_neg: N x K
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # logits: N x (1+K)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # positives at 0
        return F.cross_entropy(logits, labels), logits
