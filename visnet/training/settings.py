"""Training settings: one typed record, its defaults written once (the CLI reads them from here).

The defaults are the recipe of the committed default model (`models/README.md`): EfficientNet-Lite0
from its packaged ImageNet weights, the first seven trunk stages frozen and cached, the rest and
the shallow branches fine-tuned with the in-batch contrastive loss (colour variants counted 0.1
less as negatives), plus the hinge on catalog triplets when a triplet file is given.

Kept free of torch so the command line can show these defaults without loading a network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

LOSSES = ("contrastive", "triplet", "batch-hard")


@dataclass(frozen=True)
class TrainSettings:
    data: str  # a Street2Shop-layout folder
    out: str  # the run folder: last.pt, model.pt, history.jsonl, training.png
    preset: str = "lite0"  # the default model: EfficientNet-Lite0 + shallow branches
    triplets: str | None = None  # a triplet file or review queue; None: read the data set
    include_pending: bool = False  # from a review queue, also train on unreviewed triplets
    street_boxes: str | None = None  # detected boxes of the street photos (`visnet detect boxes`)
    # jittered copies of each labelled street box (IoU 0.5-0.85 with it); 2 lost on validation
    box_jitter: int = 0
    # context kept around a street box (`datasets.JITTER_MARGIN`); 0 and 0.3 lost on validation
    street_margin: float = 0.15
    loss: str = "contrastive"
    steps: int = 600
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"  # or "step" (x0.1 at 60% and 85% of the steps)
    warmup_steps: int = 40
    margin: float = 0.2
    temperature: float = 0.05
    street_fraction: float = 0.6
    same_category_fraction: float = 0.25
    variant_fraction: float = 0.25  # with `freeze`: batch share of whole colour-variant families
    variant_offset: float = 0.1  # with `freeze`: a colour variant counts this much (cosine) less
    val_fraction: float = 0.1
    val_categories: str = ""  # comma-separated: hold these whole categories out instead
    val_every: int = 150
    checkpoint_every: int = 50
    seed: int = 0
    pretrained: str | None = (
        "efficientnet_lite0"  # a backbone name (its packaged weights) or a weights file
    )
    max_minutes: float = 0.0  # stop (and save) after this long; 0: no limit
    threads: int = 0  # torch threads; 0: every core
    freeze: int = 7  # trunk stages kept frozen and cached (`training/cached.py`); 0: train all
    cache_versions: int = 4  # augmented views of each image cached when `freeze` is set
    cache_dir: str = ""  # where cached features are kept; "": DATA/.cache/features
    triplet_weight: float = 1.0  # with `freeze` and `triplets`: contrastive + weight x triplet

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'adamw' or 'sgd'")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'cosine' or 'step'")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")
        if self.variant_offset < 0:
            raise ValueError(f"variant_offset must be >= 0; got {self.variant_offset}")
        if self.box_jitter < 0 or self.street_margin < 0:
            raise ValueError("box_jitter and street_margin must be >= 0")
        if self.freeze < 0 or self.cache_versions < 1 or self.triplet_weight < 0:
            raise ValueError("freeze and triplet_weight must be >= 0, cache_versions >= 1")
        if self.freeze and self.loss != "contrastive":
            raise ValueError(
                f"freeze (cached training) uses the contrastive loss; for loss {self.loss!r} "
                "pass freeze=0 (--freeze 0)"
            )


def default(name: str) -> Any:
    """The default of one `TrainSettings` field (for the CLI's options)."""
    return {f.name: f.default for f in dataclasses.fields(TrainSettings)}[name]
