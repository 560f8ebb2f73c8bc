"""Scorer registry: names -> factories of Embedders; `NAME[:ARGUMENT]` specs and weight strings."""

from __future__ import annotations

from collections.abc import Callable

from visnet.features.base import Embedder
from visnet.triplets.scorers.colour import colour_scorer
from visnet.triplets.scorers.deep import deep_scorer
from visnet.triplets.scorers.phash import phash_scorer
from visnet.triplets.scorers.texture import texture_scorer

__all__ = ["get_scorer", "known_scorers", "parse_weights", "register_scorer"]

ScorerFactory = Callable[[str | None], Embedder]
_FACTORIES: dict[str, ScorerFactory] = {
    "colour": colour_scorer,
    "texture": texture_scorer,
    "deep": deep_scorer,
    "phash": phash_scorer,
}


def register_scorer(name: str, factory: ScorerFactory) -> None:
    """Make `factory(argument) -> Embedder` available as scorer `name`."""
    if name in _FACTORIES:
        raise ValueError(f"scorer {name!r} is already registered")
    if not name or ":" in name or "=" in name or "," in name:
        raise ValueError(f"scorer names must be non-empty without ':', '=' or ','; got {name!r}")
    _FACTORIES[name] = factory


def known_scorers() -> list[str]:
    """Registered scorer names, sorted."""
    return sorted(_FACTORIES)


def _factory(name: str) -> ScorerFactory:
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(known_scorers())
        raise ValueError(f"unknown scorer {name!r}; known scorers: {known}")
    return factory


def get_scorer(spec: str) -> Embedder:
    """Build the scorer a spec names: `colour`, `deep:models/x.pt`, `deep:resnet18:w.pth`, ..."""
    name, _, argument = spec.partition(":")
    return _factory(name)(argument or None)


def parse_weights(text: str) -> dict[str, float]:
    """`colour=1,texture=0.5,deep:m.pt=1` -> {spec: weight}; a bare spec means weight 1.

    Weights must be finite and >= 0 with at least one positive. Specs are checked against the
    registry here (nothing is built), so a typo fails before any image is read.
    """
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        spec, sep, raw = part.rpartition("=")
        spec, raw = (spec, raw) if sep else (raw, "1")
        _factory(spec.strip().partition(":")[0])
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"scorer weight for {spec!r} must be a number; got {raw!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"scorer weight for {spec!r} must be finite and >= 0; got {raw!r}")
        weights[spec.strip()] = weight
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"need at least one scorer with a positive weight; got {text!r}")
    return weights
