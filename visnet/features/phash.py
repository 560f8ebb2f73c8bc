"""Perceptual-hash embedder: 64-bit DCT pHash as a +-1 vector; inner product = 1 - 2 Hamming/64."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.fft import dctn

from visnet.features.pixels import grey, stack_small

__all__ = ["PerceptualHash", "hamming_distance", "phash_bits", "phash_vectors"]


def phash_bits(rgb: np.ndarray, hash_side: int = 8) -> np.ndarray:
    """pHash bits of (n, h, w, 3) uint8 images: low-frequency DCT coefficients above median."""
    coefficients = dctn(grey(rgb), axes=(1, 2), norm="ortho")
    low = coefficients[:, :hash_side, :hash_side].reshape(len(rgb), -1)
    return low > np.median(low, axis=1, keepdims=True)


def phash_vectors(bits: np.ndarray) -> np.ndarray:
    """Bits (n, b) -> float32 +-1/sqrt(b) rows, unit norm."""
    return ((bits.astype(np.float32) * 2.0 - 1.0) / np.sqrt(bits.shape[1])).astype(np.float32)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two bit matrices (n, b) and (m, b) -> (n, m)."""
    a, b = a.astype(np.int32), b.astype(np.int32)
    return a @ (1 - b).T + (1 - a) @ b.T


@dataclass
class PerceptualHash:
    """The classic pHash: object crop, 32x32 grey, 2-D DCT, the 8x8 low band against its median."""

    size: int = 32
    hash_side: int = 8
    name: str = "phash"

    dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.dim = self.hash_side * self.hash_side

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:v1:size={self.size}:side={self.hash_side}"

    def bits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The raw hash bits, (n, hash_side**2) bool."""
        return phash_bits(stack_small(images, self.size, crop_object=True), self.hash_side)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return phash_vectors(self.bits(images))
