"""BISS near-duplicate scorer: the 64-bit perceptual hash of visnet.features as a +-1 vector."""

from __future__ import annotations

from visnet.features.base import Embedder
from visnet.features.phash import PerceptualHash

__all__ = ["phash_scorer"]


def phash_scorer(argument: str | None = None) -> Embedder:
    """pHash; inner product = 1 - 2 * Hamming / 64, so near-duplicates rank first."""
    if argument:
        raise ValueError(f"scorer 'phash' takes no argument; got {argument!r}")
    return PerceptualHash()
