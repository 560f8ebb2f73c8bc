"""The optimiser both trainers (embedding and detector) build from their settings."""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    kind: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum; an unknown `kind` raises ValueError naming the known ones."""
    params = list(params)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}; use one of {OPTIMIZERS}")
