"""Training objectives: the paper's triplet hinge loss, batch-hard mining, in-batch contrastive."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["sum", "mean"]

PAPER_MARGIN = 0.0009  # the authors' margin on their unit-norm 4096-D embeddings


def squared_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise squared Euclidean distance of two (N, D) tensors -> (N,)."""
    return (a - b).pow(2).sum(dim=-1)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean'; got {reduction!r}")


class TripletLoss(nn.Module):
    """``max(0, D(q, p) - D(q, n) + margin)`` with D the squared Euclidean distance.

    Summed over the batch by default, as in the paper; ``reduction='mean'`` averages instead.
    """

    def __init__(self, margin: float = 0.2, reduction: Reduction = "sum") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.margin = margin
        self.loss = nn.TripletMarginWithDistanceLoss(
            distance_function=squared_euclidean, margin=margin, reduction=reduction
        )

    def forward(
        self, query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> torch.Tensor:
        return self.loss(query, positive, negative)


def _pairwise_squared(x: torch.Tensor) -> torch.Tensor:
    # Direct differences, not the |a|^2 + |b|^2 - 2ab expansion: exact zeros, stable gradients.
    return (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(dim=-1)


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Online hard mining: each anchor with its farthest positive and nearest negative.

    Distances are squared Euclidean. Anchors without a positive or without a negative in the
    batch are skipped; with none left the loss is a zero that still carries a gradient.
    """
    _check_reduction(reduction)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"need embeddings (N, D) and labels (N,); got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )
    dist = _pairwise_squared(embeddings)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive_mask, negative_mask = same & ~eye, ~same
    valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_pos = dist.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~negative_mask, float("inf")).amin(dim=1)
    losses = F.relu(hardest_pos - hardest_neg + margin)[valid]
    return losses.sum() if reduction == "sum" else losses.mean()


class InBatchContrastive(nn.Module):
    """Symmetric InfoNCE between queries and their positives, with a learned temperature.

    Row i of ``query`` matches row i of ``positive``; every other row in the batch is a
    negative, except rows with the same ``labels`` (the same product twice), which are masked.

    ``families`` (optional, one id per row) marks near relatives such as colour variants of one
    product: they stay negatives, but their similarity counts ``family_offset`` (in cosine) lower,
    so the loss is satisfied once a relative sits just below the true match instead of pushing it
    as far away as an unrelated product (which would cost look-alike recommendations).
    """

    def __init__(
        self, temperature: float = 0.07, learn_temperature: bool = True, max_scale: float = 100.0
    ) -> None:
        super().__init__()
        log_scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(log_scale, requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_scale)

    @property
    def temperature(self) -> float:
        """The current temperature, 1 / exp(log_scale), after clamping."""
        return float(torch.exp(-self.log_scale.detach().clamp(max=self.max_log_scale)))

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        labels: torch.Tensor | None = None,
        families: torch.Tensor | None = None,
        family_offset: float = 0.0,
    ) -> torch.Tensor:
        if query.shape != positive.shape or query.ndim != 2:
            raise ValueError(
                f"query and positive must both be (N, D); got {tuple(query.shape)} "
                f"and {tuple(positive.shape)}"
            )
        scale = self.log_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * F.normalize(query, dim=1) @ F.normalize(positive, dim=1).T
        if families is not None and family_offset:
            kin = families.unsqueeze(0) == families.unsqueeze(1)
            eye = torch.eye(len(families), dtype=torch.bool, device=logits.device)
            logits = logits - (scale * family_offset) * (kin & ~eye).to(logits.dtype)
        if labels is not None:
            same = labels.unsqueeze(0) == labels.unsqueeze(1)
            eye = torch.eye(len(labels), dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(same & ~eye, float("-inf"))
        targets = torch.arange(len(query), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
