"""Pixel preparation shared by the hand-made embedders: small arrays, object masks and crops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["WHITE_LEVEL", "grey", "object_mask", "small_rgb", "stack_small"]

# A pixel whose three channels all exceed this is catalog background (white studio backdrop).
WHITE_LEVEL = 235
# Below this fraction of object pixels the mask is not trusted and every pixel counts.
MIN_OBJECT_FRACTION = 0.05
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def object_mask(rgb: np.ndarray, min_fraction: float = MIN_OBJECT_FRACTION) -> np.ndarray:
    """Boolean mask of non-background pixels of (..., h, w, 3) uint8 images; all-True if too few."""
    mask = rgb.min(axis=-1) < WHITE_LEVEL
    fraction = mask.reshape(*mask.shape[:-2], -1).mean(axis=-1)
    too_few = np.asarray(fraction < min_fraction)
    if too_few.ndim == 0:
        return np.ones_like(mask) if too_few else mask
    mask[too_few] = True
    return mask


def _object_box(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the non-background pixels, or None if there are too few."""
    mask = rgb.min(axis=-1) < WHITE_LEVEL
    if mask.mean() < MIN_OBJECT_FRACTION:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def small_rgb(image: Image.Image, size: int, crop_object: bool = False) -> np.ndarray:
    """`image` as a (size, size, 3) uint8 array, maybe cropped to its non-white object first."""
    factor = min(image.size) // (2 * size)
    if factor >= 2:  # integer pre-shrink is far cheaper than a filtered resize of the full image
        image = image.reduce(factor)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if crop_object:
        box = _object_box(np.asarray(image))
        if box is not None:
            top, bottom, left, right = box
            image = image.crop((left, top, right, bottom))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def stack_small(images: Sequence[Image.Image], size: int, crop_object: bool = False) -> np.ndarray:
    """A batch of images as one (n, size, size, 3) uint8 array."""
    if not images:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack([small_rgb(image, size, crop_object) for image in images])


def grey(rgb: np.ndarray) -> np.ndarray:
    """Luma in [0, 1] of (..., 3) uint8 images, float32."""
    return (rgb.astype(np.float32) @ _LUMA) / 255.0
