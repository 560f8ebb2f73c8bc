"""Preprocessing carried by the model: one source for the train, batch and API transforms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Any], torch.Tensor]
TrainStyle = Literal["augment", "paper"]


@dataclass(frozen=True)
class Preprocess:
    """Input geometry and normalisation of a model: resize shorter side, crop, normalise."""

    input_size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.input_size < 1 or self.resize < self.input_size:
            raise ValueError(
                f"need 1 <= input_size <= resize; got input_size={self.input_size}, "
                f"resize={self.resize}"
            )

    def _to_tensor(self) -> list[v2.Transform]:
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]

    def eval_transform(self) -> Transform:
        """PIL RGB image -> normalised (3, input_size, input_size) float tensor, deterministic."""
        return v2.Compose(
            [
                v2.Resize(self.resize),
                v2.CenterCrop(self.input_size),
                *self._to_tensor(),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def train_transform(self, style: TrainStyle = "augment", min_scale: float = 0.5) -> Transform:
        """Random training views.

        ``paper``: resize, random crop and mirror (the authors' recipe). ``augment`` (default):
        random resized crop, mirror, colour jitter, and light photographic damage (blur, noise,
        rare grayscale) so catalog views look more like photos.
        """
        if style == "paper":
            return v2.Compose(
                [
                    v2.Resize(self.resize),
                    v2.RandomCrop(self.input_size),
                    v2.RandomHorizontalFlip(),
                    *self._to_tensor(),
                    v2.Normalize(self.mean, self.std),
                ]
            )
        if style != "augment":
            raise ValueError(f"unknown train style {style!r}; use 'augment' or 'paper'")
        return self._augment(min_scale)

    def _augment(self, min_scale: float) -> Transform:
        jitter = v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)
        blur_kernel = max(3, (self.input_size // 16) | 1)
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.input_size, scale=(min_scale, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([jitter], p=0.8),
                v2.RandomGrayscale(p=0.05),
                v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 1.5))], p=0.2),
                *self._to_tensor(),
                v2.RandomApply([v2.GaussianNoise(sigma=0.03, clip=True)], p=0.2),
                v2.Normalize(self.mean, self.std),
            ]
        )
