"""Global and local InfoNCE (model/prior/global_infonce.py, local_infonce.py) against slow, obviously-correct loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.prior.global_infonce import global_infonce
from model.prior.local_infonce import local_infonce


def _unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _loop_loss(q, k, queue, temperature, weights=None):
    """-log(exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.n_j/T))), (weighted) mean over rows."""
    total, norm = 0.0, 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / temperature)
        neg = sum(math.exp(float(q[i] @ queue[j]) / temperature) for j in range(queue.shape[0]))
        w = 1.0 if weights is None else float(weights[i])
        total += w * -math.log(pos / (pos + neg))
        norm += w
    return total / norm if norm > 0 else 0.0


@pytest.mark.parametrize("temperature", [0.2, 0.07, 1.0])
def test_global_infonce_matches_loop(temperature):
    q, k, queue = _unit(6, 16, seed=0), _unit(6, 16, seed=1), _unit(20, 16, seed=2)
    loss, logits = global_infonce(q.float(), k.float(), queue.float(), temperature=temperature)
    assert loss.dtype == torch.float32 and logits.shape == (6, 21)
    assert loss.item() == pytest.approx(_loop_loss(q, k, queue, temperature), rel=1e-5)
    # positive at index 0, negatives after it in queue order, all divided by T
    for i in range(6):
        assert logits[i, 0].item() == pytest.approx(float(q[i] @ k[i]) / temperature, rel=1e-5, abs=1e-6)
        for j in range(20):
            assert logits[i, 1 + j].item() == pytest.approx(float(q[i] @ queue[j]) / temperature,
                                                             rel=1e-5, abs=1e-6)


def test_global_infonce_temperature_scales_logits():
    q, k, queue = _unit(4, 8, seed=3).float(), _unit(4, 8, seed=4).float(), _unit(10, 8, seed=5).float()
    _, l1 = global_infonce(q, k, queue, temperature=0.2)
    _, l2 = global_infonce(q, k, queue, temperature=0.1)
    torch.testing.assert_close(l2, 2 * l1)


def test_global_infonce_gradients_flow_to_q_only():
    q = _unit(4, 8, seed=6).float().requires_grad_()
    k = _unit(4, 8, seed=7).float().requires_grad_()
    queue = _unit(10, 8, seed=8).float().requires_grad_()
    loss, _ = global_infonce(q, k, queue)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_global_infonce_perfect_positive_is_cheap():
    q = _unit(1, 8, seed=9).float().repeat(4, 1)  # four copies of one unit vector
    loss_same, logits = global_infonce(q, q, -q.repeat(3, 1))  # positive 1/T, 12 negatives -1/T
    assert (logits.argmax(1) == 0).all()
    assert loss_same.item() < 1e-3


def test_global_infonce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N x D"):
        global_infonce(torch.zeros(4, 8), torch.zeros(3, 8), torch.zeros(5, 8))
    with pytest.raises(ValueError):
        global_infonce(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(5, 7))


def test_local_infonce_matches_loop_unweighted_and_weighted():
    q, k, queue = _unit(12, 16, seed=10), _unit(12, 16, seed=11), _unit(30, 16, seed=12)
    loss, logits = local_infonce(q.float(), k.float(), queue.float(), temperature=0.2)
    assert logits.shape == (12, 31)
    assert loss.item() == pytest.approx(_loop_loss(q, k, queue, 0.2), rel=1e-5)

    w = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=torch.float64)
    loss_w, _ = local_infonce(q.float(), k.float(), queue.float(), temperature=0.2, weights=w.float())
    assert loss_w.item() == pytest.approx(_loop_loss(q, k, queue, 0.2, w), rel=1e-5)

    w2 = torch.rand(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss_w2, _ = local_infonce(q.float(), k.float(), queue.float(), temperature=0.5, weights=w2.float())
    assert loss_w2.item() == pytest.approx(_loop_loss(q, k, queue, 0.5, w2), rel=1e-5)


def test_local_infonce_ignores_invalid_rows_and_handles_none_valid():
    q, k, queue = _unit(5, 8, seed=13).float(), _unit(5, 8, seed=14).float(), _unit(9, 8, seed=15).float()
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    base, _ = local_infonce(q, k, queue, weights=w)
    q2, k2 = q.clone(), k.clone()
    q2[2], k2[4] = _unit(8, seed=16).float(), _unit(8, seed=17).float()  # change invalid rows only
    again, _ = local_infonce(q2, k2, queue, weights=w)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)

    qg = q.clone().requires_grad_()
    zero, _ = local_infonce(qg, k, queue, weights=torch.zeros(5))
    assert zero.item() == 0.0 and torch.isfinite(zero)
    zero.backward()
    assert torch.isfinite(qg.grad).all()


def test_local_infonce_gradients_flow_to_q_only():
    q = _unit(6, 8, seed=18).float().requires_grad_()
    k = _unit(6, 8, seed=19).float().requires_grad_()
    queue = _unit(10, 8, seed=20).float().requires_grad_()
    loss, _ = local_infonce(q, k, queue, weights=torch.ones(6))
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_local_infonce_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        local_infonce(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(5, 8), weights=torch.ones(3))


def test_losses_are_fp32_from_half_inputs():
    q, k, queue = (_unit(4, 8, seed=s).to(torch.bfloat16) for s in (21, 22, 23))
    loss, logits = global_infonce(q, k, queue)
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32
    loss_l, logits_l = local_infonce(q, k, queue, weights=torch.ones(4))
    assert loss_l.dtype == torch.float32 and logits_l.dtype == torch.float32
