"""Service settings: one typed dataclass, read from a TOML/JSON file, `VISNET_*` env vars, args."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["ENV_PREFIX", "ServiceSettings", "load_settings"]

ENV_PREFIX = "VISNET_"
_PATHS = ("index", "review_queue", "review_root", "detector", "catalog_root")


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the service needs; paths come from here, never probed.

    ``model`` is a checkpoint path (``*.pt`` or ``checkpoint:PATH``) or a baseline embedder name
    (``colour-histogram``, ...): it must be the model the index was built with.
    ``api_key`` None disables every write endpoint (403); with a key, writes need ``X-API-Key``.
    """

    index: Path
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    review_queue: Path | None = None
    review_root: Path | None = None  # triplet images' root; default: the one the queue records
    detector: Path | None = None  # None: search the whole photo
    detect_threshold: float = 0.5  # objects scoring at least this are searched (else the best)
    # An object's detected category filters its search only when the detector is at least this
    # sure of it. The default detector's category is often wrong (right for 43% of held-out train
    # photos' best boxes, 74% of those at >= 0.7; benchmarks/detector_crops.py): a wrong filter
    # hides the right product, and an unfiltered search finds neighbours in the right category.
    category_threshold: float = 0.8
    max_objects: int = 5
    catalog_root: Path | None = None  # default: build.json's catalog_root
    max_upload_bytes: int = 10 * 1024 * 1024  # the whole request body
    max_pixels: int = 40_000_000
    max_images_per_product: int = 8
    default_k: int = 20
    max_k: int = 100
    precompute_k: int = 20  # length of the stored recommendation lists
    refresh_after_s: float = 60.0  # recompute the lists this long after a write; 0: never
    similar_cache_size: int = 10_000  # serialised /similar responses kept (cleared on writes)
    product_cache_size: int = 100_000  # products kept in memory for result titles (ditto)
    compute_threads: int = 1  # torch and BLAS threads per call; 0: their defaults (every core)
    model_workers: int = 1  # model calls (detect, embed) running at once
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a checkpoint path or an embedder name; got ''")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("api_key must be at least 8 characters (or unset to disable writes)")
        positive = ("max_upload_bytes", "max_pixels", "default_k", "max_k", "precompute_k")
        for name in (*positive, "model_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"default_k must be in 1..max_k={self.max_k}; got {self.default_k}")
        for name in ("detect_threshold", "category_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")

    @property
    def writes_enabled(self) -> bool:
        return self.api_key is not None

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded product images are stored: under the index folder."""
        return self.index / "uploads"


def _coerce(name: str, value: Any) -> Any:
    """A file or env value -> the field's type (env values are strings)."""
    kinds = {f.name: f.type for f in fields(ServiceSettings)}
    if name not in kinds:
        known = ", ".join(sorted(kinds))
        raise ValueError(f"unknown service setting {name!r}; known: {known}")
    if value is None or value == "":
        return None
    if name in _PATHS:
        return Path(value).expanduser()
    kind = str(kinds[name])
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return str(value)


def _from_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    section = data.get("service", data)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: expected a table of settings (optionally under [service])")
    return section


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    names = {f.name for f in fields(ServiceSettings)}
    found = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in names:
            found[key[len(ENV_PREFIX) :].lower()] = value
    return found


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServiceSettings:
    """Settings from, lowest priority first: a TOML/JSON file, ``VISNET_*`` env vars, overrides.

    Overrides that are None are ignored, so CLI options left unset fall through.
    """
    merged: dict[str, Any] = {}
    if config is not None:
        merged.update(_from_file(Path(config)))
    merged.update(_from_env(os.environ if env is None else env))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    values = {name: _coerce(name, value) for name, value in merged.items()}
    missing = [name for name in ("index", "model") if values.get(name) is None]
    if missing:
        raise ValueError(
            f"missing service settings {missing}: pass --index/--model or set "
            f"{', '.join(ENV_PREFIX + m.upper() for m in missing)}"
        )
    return ServiceSettings(**values)
