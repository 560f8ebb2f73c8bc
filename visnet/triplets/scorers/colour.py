"""BISS colour scorer: the colour-histogram embedder of visnet.features, one unit vector a view."""

from __future__ import annotations

from visnet.features.base import Embedder
from visnet.features.colour import ColourHistogram

__all__ = ["colour_scorer"]


def colour_scorer(argument: str | None = None) -> Embedder:
    """HSV histogram of the object pixels; inner product = Hellinger affinity of colour mixes."""
    if argument:
        raise ValueError(f"scorer 'colour' takes no argument; got {argument!r}")
    return ColourHistogram()
