"""Detector training settings: one typed record, its defaults written once (the CLI reads them).

Kept free of torch so the command line can show these defaults without loading a network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# the default detector (models/README.md): trained with these defaults, `visnet detect train
# --data data/demo --out RUN` reproduces it (then `visnet detect calibrate --min-size 288`)
DEFAULT_ARCH = "efficientnet_lite0_fpn"


@dataclass(frozen=True)
class DetectTrainSettings:
    arch: str = DEFAULT_ARCH
    steps: int = 3000
    batch_size: int = 4
    optimizer: str = "sgd"  # or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    clip_grad: float = 10.0
    # RoIs sampled per photo for the box-head loss; torchvision's 512 suits crowded COCO scenes,
    # our photos hold one or a few items, and 128 trains about a third faster on a CPU
    box_samples: int = 128
    min_size: int = 320  # 0: the architecture's default
    max_size: int = 0
    box_head_dim: int = 0
    flip: float = 0.5  # probability of a horizontal flip
    # the other products a street photo shows (meta/json/street_objects.json) are trained as
    # products when at least this share of each is in view; above 1: never (only the pair's box)
    others: float = 0.5
    seed: int = 0
    # street photos showing this share of the training products (whole colour-variant groups,
    # `visnet.data.splits`) are held out: `visnet detect eval --split val` scores them
    val_fraction: float = 0.1
    # a local torchvision classifier state dict; for an arch with packaged ImageNet weights
    # (efficientnet_lite0_fpn) unset means those, a path a file in their format, "none" random
    pretrained_backbone: str | None = None
    checkpoint_every: int = 25
    max_minutes: float = 0.0  # stop (and save) after this long; 0: no limit
    threads: int = 0  # 0: every core
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adamw'")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip is a probability; got {self.flip}")


def default(name: str) -> Any:
    """The default of one `DetectTrainSettings` field (for the CLI's options)."""
    return {f.name: f.default for f in dataclasses.fields(DetectTrainSettings)}[name]
