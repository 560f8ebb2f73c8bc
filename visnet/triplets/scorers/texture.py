"""BISS pattern/texture scorer: LBP and Gabor texture vectors of visnet.features, on grey levels."""

from __future__ import annotations

from visnet.features.base import Embedder
from visnet.features.texture import Texture

__all__ = ["texture_scorer"]


def texture_scorer(argument: str | None = None) -> Embedder:
    """Texture of the object crop, blind to hue: stripes match stripes in any colour."""
    if argument:
        raise ValueError(f"scorer 'texture' takes no argument; got {argument!r}")
    return Texture()
