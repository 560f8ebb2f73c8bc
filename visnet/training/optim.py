"""The optimiser and the learning-rate schedule both trainers (embedding and detector) build."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

OPTIMIZERS = ("adamw", "sgd")
Schedule = Callable[[int], float]  # step -> the factor on the base learning rate (LambdaLR's)


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


def cosine(floor: float) -> Callable[[float], float]:
    """Half a cosine over the progress through the run (0 to 1): from 1 down to `floor`."""
    return lambda progress: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_then(
    decay: Callable[[float], float], steps: int, warmup: int, start: float = 0.0, ahead: int = 0
) -> Schedule:
    """A linear warm-up over `warmup` steps from `start` (counted `ahead` steps early), then
    `decay` of the progress through the other steps. A function, not an object: LambdaLR would
    save an object's fields and restore its old `steps`, so a longer rerun could not extend it."""

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1 - start) * (step + ahead) / warmup
        return decay(min(1.0, (step - warmup) / max(1, steps - warmup)))

    return factor
