"""Texture embedder: LBP histograms at two scales plus Gabor energy profile, on grey levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.feature import local_binary_pattern
from skimage.filters import gabor_kernel

from visnet.features.base import l2_normalise
from visnet.features.pixels import grey, object_mask, stack_small

__all__ = ["Texture", "gabor_energies", "lbp_histograms", "texture_features"]

LBP_SCALES: tuple[tuple[int, float], ...] = ((8, 1.0), (16, 2.0))
GABOR_FREQUENCIES: tuple[float, ...] = (0.08, 0.16, 0.32)
GABOR_ORIENTATIONS = 4
LBP_SMOOTHING = 1.0  # Gaussian sigma in pixels of the 64 x 64 image


def lbp_histograms(
    gray: np.ndarray, mask: np.ndarray, scales: Sequence[tuple[int, float]] = LBP_SCALES
) -> np.ndarray:
    """Hellinger-mapped rotation-invariant uniform LBP histograms, a block per (points, radius)."""
    blocks = []
    for points, radius in scales:
        bins = points + 2
        codes = np.stack(
            [local_binary_pattern(g, points, radius, method="uniform") for g in gray]
        ).astype(np.int64)
        hist = np.stack(
            [np.bincount(c[m], minlength=bins)[:bins] for c, m in zip(codes, mask, strict=True)]
        ).astype(np.float64)
        hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)
        blocks.append(np.sqrt(hist))
    return np.concatenate(blocks, axis=1)


@lru_cache(maxsize=8)
def _gabor_bank(size: int, frequencies: tuple[float, ...], orientations: int) -> np.ndarray:
    """FFTs of a complex Gabor bank, zero-padded to (size, size) and centred at the origin."""
    bank = []
    for frequency in frequencies:
        for k in range(orientations):
            kernel = gabor_kernel(frequency, theta=np.pi * k / orientations)
            kernel = kernel[:size, :size]
            padded = np.zeros((size, size), dtype=np.complex128)
            kh, kw = kernel.shape
            padded[:kh, :kw] = kernel
            padded = np.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1))
            bank.append(np.fft.fft2(padded))
    return np.stack(bank).astype(np.complex64)


def gabor_energies(
    gray: np.ndarray,
    mask: np.ndarray,
    frequencies: tuple[float, ...] = GABOR_FREQUENCIES,
    orientations: int = GABOR_ORIENTATIONS,
) -> np.ndarray:
    """Unit-norm, mean-centred log energy of a Gabor bank over the object pixels, (n, filters)."""
    n, size, _ = gray.shape
    centred = gray - gray.mean(axis=(1, 2), keepdims=True)
    spectrum = np.fft.fft2(centred)[:, None] * _gabor_bank(size, frequencies, orientations)[None]
    magnitude = np.abs(np.fft.ifft2(spectrum))
    weights = mask[:, None].astype(np.float32)
    energy = (magnitude * weights).sum(axis=(2, 3)) / np.maximum(weights.sum(axis=(2, 3)), 1.0)
    profile = np.log(energy + 1e-4)
    return l2_normalise(profile - profile.mean(axis=1, keepdims=True))


def texture_features(rgb: np.ndarray) -> np.ndarray:
    """Texture vectors of (n, h, w, 3) uint8 images: LBP blocks and a Gabor block, unit norm."""
    gray = grey(rgb)
    mask = object_mask(rgb)
    # LBP compares single pixels, so JPEG noise and one-pixel shifts flip codes; smooth first.
    smooth = gaussian_filter(gray, sigma=(0.0, LBP_SMOOTHING, LBP_SMOOTHING))
    lbp = lbp_histograms((smooth * 255).astype(np.uint8), mask)
    gabor = gabor_energies(gray, mask)
    return l2_normalise(np.concatenate([lbp, gabor], axis=1))


@dataclass
class Texture:
    """LBP (8 points r=1, 16 points r=2) histograms and a 3x4 Gabor energy profile, 40-D."""

    size: int = 64
    name: str = "texture"

    dim: int = field(init=False)

    def __post_init__(self) -> None:
        lbp = sum(points + 2 for points, _ in LBP_SCALES)
        self.dim = lbp + len(GABOR_FREQUENCIES) * GABOR_ORIENTATIONS

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:v2:size={self.size}"

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return texture_features(stack_small(images, self.size, crop_object=True))
