"""Preprocessing carried by the model: one source for the train, batch and API transforms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Any], torch.Tensor]
TrainStyle = Literal["augment", "paper"]
Fit = Literal["crop", "letterbox"]
FITS = ("crop", "letterbox")
WHITE = (255, 255, 255)  # catalog photos stand on white; so does the letterbox padding


class Letterbox:
    """Fit the whole image into a square of `size` (aspect kept, bicubic) and pad it with white.

    Nothing is cut off, whatever the aspect ratio, and the output never exceeds size x size, so
    a long strip of an image costs no more memory than a square one.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        scale = self.size / max(image.size)
        width = min(self.size, max(1, round(image.width * scale)))
        height = min(self.size, max(1, round(image.height * scale)))
        canvas = Image.new("RGB", (self.size, self.size), WHITE)
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        canvas.paste(resized, ((self.size - width) // 2, (self.size - height) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size})"


@dataclass(frozen=True)
class Preprocess:
    """Input geometry and normalisation of a model.

    ``fit="crop"``: resize the shorter side to ``resize``, centre-crop ``input_size`` (the
    paper's). ``fit="letterbox"``: the whole image fitted into ``input_size`` on white.
    """

    input_size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fit: Fit = "crop"

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}; use one of {FITS}")
        if self.input_size < 1 or self.resize < self.input_size:
            raise ValueError(
                f"need 1 <= input_size <= resize; got input_size={self.input_size}, "
                f"resize={self.resize}"
            )

    def _geometry(self) -> list[Any]:
        if self.fit == "letterbox":
            return [Letterbox(self.input_size)]
        return [v2.Resize(self.resize), v2.CenterCrop(self.input_size)]

    def _to_tensor(self) -> list[v2.Transform]:
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]

    def eval_transform(self) -> Transform:
        """PIL RGB image -> normalised (3, input_size, input_size) float tensor, deterministic."""
        return v2.Compose(
            [
                *self._geometry(),
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
        # a letterboxing model sees whole, padded images: augment those, not a crop of the raw one
        fit = [Letterbox(self.input_size)] if self.fit == "letterbox" else []
        return v2.Compose(
            [
                *fit,
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
