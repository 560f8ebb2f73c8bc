"""Tests for the training losses against naive Python-loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visnet.model.loss import InBatchContrastive, TripletLoss, batch_hard_triplet_loss


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True))


def _triplet_reference(q, p, n, margin: float) -> list[float]:
    return [max(0.0, _sqdist(q[i], p[i]) - _sqdist(q[i], n[i]) + margin) for i in range(len(q))]


@pytest.mark.parametrize("margin", [0.0009, 0.2, 1.0])
def test_triplet_loss_matches_loop(margin: float) -> None:
    q, p, n = _unit(12, 8, 0), _unit(12, 8, 1), _unit(12, 8, 2)
    ref = _triplet_reference(q, p, n, margin)
    assert math.isclose(float(TripletLoss(margin)(q, p, n)), sum(ref), rel_tol=1e-9)
    mean = TripletLoss(margin, reduction="mean")(q, p, n)
    assert math.isclose(float(mean), sum(ref) / len(ref), rel_tol=1e-9)


def test_triplet_loss_hinge_clips_easy_triplets() -> None:
    q = _unit(3, 8, 0)
    assert float(TripletLoss(0.2)(q, q, -q)) == 0.0  # D(q,p)=0, D(q,n)=4
    assert math.isclose(float(TripletLoss(0.2)(q, -q, q)), 3 * 4.2, rel_tol=1e-9)


def test_triplet_loss_has_gradient_and_checks_reduction() -> None:
    q = _unit(4, 8, 0).requires_grad_()
    TripletLoss(1.0)(q, _unit(4, 8, 1), _unit(4, 8, 2)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        TripletLoss(reduction="none")  # type: ignore[arg-type]


def _batch_hard_reference(x, labels, margin: float) -> list[float]:
    losses = []
    for i in range(len(x)):
        pos = [_sqdist(x[i], x[j]) for j in range(len(x)) if j != i and labels[j] == labels[i]]
        neg = [_sqdist(x[i], x[j]) for j in range(len(x)) if labels[j] != labels[i]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return losses


def test_batch_hard_matches_loop() -> None:
    x = _unit(10, 6, 3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 4, 4])  # label 3 has no positive: skipped
    ref = _batch_hard_reference(x, labels, 0.3)
    assert len(ref) == 9
    got = batch_hard_triplet_loss(x, labels, margin=0.3)
    assert math.isclose(float(got), sum(ref) / len(ref), rel_tol=1e-9)
    got_sum = batch_hard_triplet_loss(x, labels, margin=0.3, reduction="sum")
    assert math.isclose(float(got_sum), sum(ref), rel_tol=1e-9)


def test_batch_hard_without_valid_anchor_is_zero_with_gradient() -> None:
    x = _unit(4, 6, 4).requires_grad_()
    loss = batch_hard_triplet_loss(x, torch.arange(4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet_loss(x, torch.arange(3))


def _info_nce_reference(q, p, scale: float, labels=None) -> float:
    q, p = F.normalize(q, dim=1), F.normalize(p, dim=1)
    n = len(q)

    def allowed(i: int, j: int) -> bool:
        return labels is None or i == j or labels[i] != labels[j]

    def ce(sim, i: int) -> float:
        row = [scale * sim(i, j) for j in range(n) if allowed(i, j)]
        return -(scale * sim(i, i)) + math.log(sum(math.exp(v) for v in row))

    rows = [ce(lambda i, j: float(q[i] @ p[j]), i) for i in range(n)]
    cols = [ce(lambda i, j: float(p[i] @ q[j]), i) for i in range(n)]
    return (sum(rows) / n + sum(cols) / n) / 2


def test_in_batch_contrastive_matches_loop() -> None:
    q, p = _unit(7, 5, 5), _unit(7, 5, 6) + 0.5 * _unit(7, 5, 5)
    loss_fn = InBatchContrastive(temperature=0.1).double()
    assert math.isclose(loss_fn.temperature, 0.1, rel_tol=1e-6)
    ref = _info_nce_reference(q, p, 10.0)
    assert math.isclose(loss_fn(q, p).item(), ref, rel_tol=1e-6)


def test_in_batch_contrastive_masks_same_label_negatives() -> None:
    q, p = _unit(6, 5, 7), _unit(6, 5, 8)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    loss_fn = InBatchContrastive(temperature=0.5).double()
    ref = _info_nce_reference(q, p, 2.0, labels)
    assert math.isclose(loss_fn(q, p, labels).item(), ref, rel_tol=1e-6)


def test_in_batch_contrastive_learns_temperature() -> None:
    loss_fn = InBatchContrastive()
    loss_fn(_unit(4, 5, 9).float(), _unit(4, 5, 10).float()).backward()
    assert loss_fn.log_scale.grad is not None
    fixed = InBatchContrastive(learn_temperature=False)
    assert not fixed.log_scale.requires_grad
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fixed(torch.zeros(3, 4), torch.zeros(2, 4))


def test_a_family_offset_eases_the_push_on_relatives_only() -> None:
    torch.manual_seed(0)
    q, p = torch.randn(6, 8), torch.randn(6, 8)
    loss = InBatchContrastive(temperature=0.1, learn_temperature=False)
    families = torch.tensor([0, 0, 1, 2, 3, 4])  # rows 0 and 1: colour variants of one product
    plain = loss(q, p)
    eased = loss(q, p, families=families, family_offset=0.2)
    assert eased < plain
    # no relatives in the batch, or no offset: exactly the plain loss
    assert torch.equal(loss(q, p, families=torch.arange(6), family_offset=0.2), plain)
    assert torch.equal(loss(q, p, families=families, family_offset=0.0), plain)
