"""Embedder registry: names -> constructors; `checkpoint:PATH` or `*.pt` loads a trained model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visnet.features.base import Embedder
from visnet.features.colour import ColourHistogram
from visnet.features.phash import PerceptualHash
from visnet.features.texture import Texture

__all__ = [
    "checkpoint_path",
    "embedder_fingerprint",
    "get_embedder",
    "known_embedders",
    "register",
]

Factory = Callable[..., Embedder]
_FACTORIES: dict[str, Factory] = {}
CHECKPOINT_PREFIX = "checkpoint:"


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make `factory(**kwargs) -> Embedder` available as `name`."""

    def add(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"embedder {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return add


def known_embedders() -> list[str]:
    """Registered names, plus the checkpoint form."""
    return sorted(_FACTORIES) + [f"{CHECKPOINT_PREFIX}PATH"]


def checkpoint_path(name: str) -> Path | None:
    """The checkpoint file a model name refers to (`checkpoint:PATH` or `*.pt`), else None."""
    if name.startswith(CHECKPOINT_PREFIX):
        return Path(name[len(CHECKPOINT_PREFIX) :]).expanduser()
    if name.endswith(".pt"):
        return Path(name).expanduser()
    return None


def get_embedder(name: str, **kwargs: Any) -> Embedder:
    """Build the embedder called `name`. Unknown names raise ValueError listing the known ones."""
    path = checkpoint_path(name)
    if path is not None:
        return _load_checkpoint(path)
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(known_embedders())
        raise ValueError(f"unknown embedder {name!r}; known: {known} (or a path ending in .pt)")
    return factory(**kwargs)


def _load_checkpoint(path: Path) -> Embedder:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train a model or fix the path")
    from visnet.model.embedder import ModelEmbedder

    return ModelEmbedder.from_checkpoint(path)


def embedder_fingerprint(embedder: Embedder, name: str | None = None) -> str:
    """A string that changes whenever the vectors `embedder` produces could change.

    Checkpoints are identified by their content hash; other embedders by their own `fingerprint`
    attribute when they have one, else by class, name, dimension and simple settings.
    """
    path = checkpoint_path(name) if name else None
    if path is not None and path.is_file():
        return f"checkpoint:sha256={_file_sha256(path)}"
    own = getattr(embedder, "fingerprint", None)
    if isinstance(own, str) and own:
        return own
    settings = {
        key: value
        for key, value in sorted(getattr(embedder, "__dict__", {}).items())
        if isinstance(value, int | float | str | bool | tuple) and not key.startswith("_")
    }
    kind = f"{type(embedder).__module__}.{type(embedder).__qualname__}"
    return f"{kind}:{embedder.name}:{embedder.dim}:{settings}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------- the registry


@register("colour-histogram")
def _colour(**kwargs: Any) -> Embedder:
    return ColourHistogram(**kwargs)


@register("texture")
def _texture(**kwargs: Any) -> Embedder:
    return Texture(**kwargs)


@register("phash")
def _phash(**kwargs: Any) -> Embedder:
    return PerceptualHash(**kwargs)


@register("untrained")
def _untrained(preset: str = "default", seed: int = 0, **kwargs: Any) -> Embedder:
    from visnet.model.embedder import untrained_embedder

    return untrained_embedder(preset=preset, seed=seed, **kwargs)
