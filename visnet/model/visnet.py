"""The VisNet model: a deep backbone branch and two shallow branches fused into one embedding."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visnet.model.backbones import DeepBranch, get_backbone_spec, load_pretrained
from visnet.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from visnet.model.shallow import BRANCH_A, BRANCH_B, CONV_CHANNELS, ShallowBranches, branch_sides


@dataclass(frozen=True)
class VisNetConfig:
    """Everything needed to rebuild a VisNet; stored in checkpoints as ``model_args``.

    ``head_dim`` is the width of fc6/fc7 for the VGG/AlexNet head (ignored by pooled heads);
    ``deep_dim`` the deep branch's output (fc8); ``embed_dim`` the final embedding.
    """

    backbone: str = "resnet18"
    input_size: int = 96
    embed_dim: int = 256
    head_dim: int = 4096
    deep_dim: int = 512
    shallow: bool = True
    dropout: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: int = 110
    fit: str = "crop"  # or "letterbox": the whole image on white (Preprocess)

    def __post_init__(self) -> None:
        get_backbone_spec(self.backbone)
        for name in ("input_size", "embed_dim", "head_dim", "deep_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        self.preprocess()  # validates resize >= input_size

    def preprocess(self) -> Preprocess:
        """The input geometry and normalisation this model expects."""
        return Preprocess(self.input_size, self.resize, self.mean, self.std, self.fit)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe for ``torch.load(weights_only=True)`` and JSON."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisNetConfig:
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VisNetConfig fields {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


_PAPER = VisNetConfig(
    backbone="vgg16",
    input_size=224,
    resize=256,
    embed_dim=4096,
    head_dim=4096,
    deep_dim=4096,
    shallow=True,
    dropout=0.4,
)
_SCRATCH = VisNetConfig()


def pretrained_config(backbone: str, **overrides: Any) -> VisNetConfig:
    """A config for a backbone with packaged ImageNet weights, at the size and normalisation
    they were trained with, letterboxed on white; ``overrides`` change any field."""
    weights = get_backbone_spec(backbone).weights
    if weights is None:
        raise ValueError(f"backbone {backbone!r} ships no weights; known: {pretrained_backbones()}")
    values: dict[str, Any] = {
        "backbone": backbone,
        "input_size": weights.input_size,
        "resize": weights.input_size,
        "fit": "letterbox",
        "mean": weights.mean,
        "std": weights.std,
        "deep_dim": 1280,
        "embed_dim": 512,
        "shallow": True,
        "dropout": 0.0,
    }
    return VisNetConfig(**{**values, **overrides})


def frozen_config(backbone: str) -> VisNetConfig:
    """The pretrained trunk alone: pooled features as they are (identity head), no shallow part."""
    return pretrained_config(backbone, shallow=False, embed_dim=1280)


def pretrained_backbones() -> list[str]:
    """Backbones whose ImageNet weights install from a package (see ``PackagedWeights``)."""
    from visnet.model.backbones import list_backbones

    return [b for b in list_backbones() if get_backbone_spec(b).weights is not None]


_LITE0 = pretrained_config("efficientnet_lite0")

PRESETS: dict[str, VisNetConfig] = {
    "paper": _PAPER,
    "paper-noshallow": dataclasses.replace(_PAPER, shallow=False),
    "paper-alexnet": dataclasses.replace(_PAPER, backbone="alexnet"),
    "lite0": _LITE0,
    "lite0-noshallow": dataclasses.replace(_LITE0, shallow=False),
    "scratch": _SCRATCH,
    "scratch-noshallow": dataclasses.replace(_SCRATCH, shallow=False),
    "default": _SCRATCH,
    "default-noshallow": dataclasses.replace(_SCRATCH, shallow=False),
}


def get_config(preset: str) -> VisNetConfig:
    """A named preset; an unknown name raises ValueError listing the presets."""
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}") from None


def _resolve(config: VisNetConfig | str) -> VisNetConfig:
    return get_config(config) if isinstance(config, str) else config


class VisNet(nn.Module):
    """Images (N, 3, S, S), normalised as ``config.preprocess()`` says -> (N, embed_dim), unit norm.

    Deep branch (L2-normalised) and, unless ``config.shallow`` is off, the shallow branches
    (L2-normalised together) are concatenated and projected by one linear layer, then normalised.
    """

    def __init__(self, config: VisNetConfig) -> None:
        super().__init__()
        self.config = config
        self.deep = DeepBranch(
            config.backbone, config.input_size, config.deep_dim, config.head_dim, config.dropout
        )
        self.shallow = ShallowBranches(config.input_size) if config.shallow else None
        self.fused_dim = config.deep_dim + (self.shallow.out_dim if self.shallow else 0)
        self.projection = nn.Linear(self.fused_dim, config.embed_dim)
        if self.deep.spec.weights is not None:
            self._start_from_deep()

    @torch.no_grad()
    def _start_from_deep(self) -> None:
        # A pretrained trunk is worth keeping from step 0: the projection starts as an identity
        # (or a random rotation onto fewer dimensions) of the deep part, the shallow part near 0.
        deep, weight = self.config.deep_dim, self.projection.weight
        start = torch.empty(self.config.embed_dim, deep)
        if self.config.embed_dim == deep:
            nn.init.eye_(start)
        else:
            nn.init.orthogonal_(start)
        weight[:, :deep].copy_(start)
        weight[:, deep:].normal_(std=0.01 / max(1, weight.shape[1] - deep) ** 0.5)
        nn.init.zeros_(self.projection.bias)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenation of the normalised deep and shallow parts, before the projection."""
        parts = [F.normalize(self.deep(x), dim=1)]
        if self.shallow is not None:
            parts.append(self.shallow(x))
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.fused(x)), dim=1)


def branch_shapes(config: VisNetConfig | str) -> dict[str, Any]:
    """Shapes through the model by arithmetic (no model is built).

    ``shallow_a``/``shallow_b``: spatial sides after the input pool, the conv and the output pool;
    ``shallow_a_dim``/``shallow_b_dim``: 96 x side x side; then the shallow, fused and output dims.
    """
    cfg = _resolve(config)
    sides_a = branch_sides(cfg.input_size, BRANCH_A)
    sides_b = branch_sides(cfg.input_size, BRANCH_B)
    dim_a = CONV_CHANNELS * sides_a[-1] ** 2 if cfg.shallow else 0
    dim_b = CONV_CHANNELS * sides_b[-1] ** 2 if cfg.shallow else 0
    return {
        "shallow_a": sides_a,
        "shallow_b": sides_b,
        "shallow_a_dim": dim_a,
        "shallow_b_dim": dim_b,
        "shallow_dim": dim_a + dim_b,
        "deep_dim": cfg.deep_dim,
        "fused_dim": cfg.deep_dim + dim_a + dim_b,
        "embed_dim": cfg.embed_dim,
    }


def create_model(
    config: VisNetConfig | str = "default",
    *,
    seed: int | None = None,
    pretrained: str | Path | None = None,
) -> VisNet:
    """Build a VisNet from a config or preset name.

    ``seed`` fixes the random initialisation without touching the global RNG; ``pretrained``
    is a local torchvision state-dict file for the backbone (never downloaded).
    """
    cfg = _resolve(config)
    if seed is None:
        model = VisNet(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VisNet(cfg)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
