"""Colour-histogram embedder: an HSV histogram of the object's pixels, Hellinger-mapped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from visnet.features.base import l2_normalise
from visnet.features.pixels import object_mask, stack_small

__all__ = ["ColourHistogram", "colour_histograms", "rgb_to_hsv"]

# Pixels this unsaturated or this dark have no reliable hue; they go to grey-level bins instead.
GREY_SATURATION = 0.15
GREY_VALUE = 0.15


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> float32 HSV, every channel in [0, 1)."""
    x = rgb.astype(np.float32) / 255.0
    value = x.max(axis=-1)
    chroma = value - x.min(axis=-1)
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.select(
        [value == r, value == g],
        [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        default=(r - g) / safe + 4.0,
    )
    hue = np.where(chroma > 0, hue / 6.0, 0.0) % 1.0
    return np.stack([hue, saturation, value], axis=-1).astype(np.float32)


def _bin_weights(
    hsv: np.ndarray, bins: tuple[int, int, int], grey_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two (bin, weight) votes per pixel: hue is split linearly between its two nearest bins.

    Hue bins are centred on 0 (red), 1/h_bins, ...; a hard edge at red would split the most common
    product colour between the first and last bin on the slightest JPEG shift. Grey pixels put
    both votes into their grey-level bin.
    """
    h_bins, s_bins, v_bins = bins
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    position = hue * h_bins
    low = np.floor(position)
    upper = position - low
    low = low.astype(np.int64) % h_bins
    s = np.minimum((sat * s_bins).astype(np.int64), s_bins - 1)
    v = np.minimum((val * v_bins).astype(np.int64), v_bins - 1)
    sv = s * v_bins + v
    first, second = low * s_bins * v_bins + sv, ((low + 1) % h_bins) * s_bins * v_bins + sv
    level = np.minimum((val * grey_bins).astype(np.int64), grey_bins - 1)
    grey_bin = h_bins * s_bins * v_bins + level
    is_grey = (sat < GREY_SATURATION) | (val < GREY_VALUE)
    first, second = np.where(is_grey, grey_bin, first), np.where(is_grey, grey_bin, second)
    return first, second, np.where(is_grey, 0.0, upper)


def colour_histograms(
    rgb: np.ndarray, bins: tuple[int, int, int] = (8, 4, 4), grey_bins: int = 4
) -> np.ndarray:
    """Hellinger-mapped HSV histograms of the object pixels of (n, h, w, 3) uint8 images."""
    n = rgb.shape[0]
    dim = bins[0] * bins[1] * bins[2] + grey_bins
    first, second, upper = _bin_weights(rgb_to_hsv(rgb), bins, grey_bins)
    mask = object_mask(rgb).reshape(n, -1).astype(np.float64)
    offset = np.arange(n)[:, None] * dim
    index = np.concatenate([first.reshape(n, -1) + offset, second.reshape(n, -1) + offset], axis=1)
    upper = upper.reshape(n, -1)
    weights = np.concatenate([mask * (1.0 - upper), mask * upper], axis=1)
    counts = np.bincount(index.ravel(), weights=weights.ravel(), minlength=n * dim)
    counts = counts.reshape(n, dim).astype(np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
    return l2_normalise(np.sqrt(shares))


@dataclass
class ColourHistogram:
    """HSV histogram (8x4x4 chromatic, soft in hue, + 4 grey bins) over non-background pixels."""

    size: int = 48
    bins: tuple[int, int, int] = (8, 4, 4)
    grey_bins: int = 4
    name: str = "colour-histogram"

    dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.dim = self.bins[0] * self.bins[1] * self.bins[2] + self.grey_bins

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:v2:size={self.size}:bins={self.bins}:grey={self.grey_bins}"

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return colour_histograms(stack_small(images, self.size), self.bins, self.grey_bins)
