"""BISS deep scorer: a pretrained network (the default), a VisNet model, or torchvision weights.

deep                       EfficientNet-Lite0 with its packaged ImageNet weights, frozen (as the
                           paper's BISS used a pretrained network's fc7)
deep:NAME                  any model name `create_embedder` takes: a checkpoint (`*.pt`), an ONNX
                           export, a pretrained backbone (`efficientnet_lite1`), `untrained`
deep:BACKBONE:WEIGHTS      a registered torchvision backbone with a local state-dict file;
                           features are fc7 for VGG/AlexNet (the paper's BISS), else the
                           global average pool of the last conv map
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visnet.features.base import Embedder, l2_normalise

log = logging.getLogger(__name__)

__all__ = ["BackboneFeatures", "deep_scorer"]

DEFAULT_DEEP = "efficientnet_lite0"  # the frozen pretrained network: strong ranks, no training
BACKBONE_INPUT = 224  # ImageNet weights see 224-pixel crops of 256-pixel resizes
BACKBONE_RESIZE = 256


def deep_scorer(argument: str | None = None) -> Embedder:
    """The deep scorer that `argument` names (see the module docstring)."""
    argument = argument or DEFAULT_DEEP
    backbone, sep, weights = argument.partition(":")
    if sep and _is_backbone(backbone):
        return BackboneFeatures(backbone, Path(weights).expanduser())
    from visnet.embed.registry import create_embedder

    log.info("deep scorer: %s", argument)
    return create_embedder(argument, backend="auto")


def _is_backbone(name: str) -> bool:
    from visnet.model.backbones import list_backbones

    return name in list_backbones()


class BackboneFeatures:
    """Pretrained torchvision trunk features (fc7 or pooled conv), L2-normalised, in batches."""

    def __init__(
        self,
        backbone: str,
        weights: Path,
        input_size: int = BACKBONE_INPUT,
        resize: int = BACKBONE_RESIZE,
        batch_size: int = 32,
    ) -> None:
        from visnet.model.backbones import create_backbone, load_pretrained
        from visnet.model.preprocess import Preprocess

        branch = create_backbone(backbone, input_size=input_size, deep_dim=1, dropout=0.0)
        loaded = load_pretrained(branch, weights)
        self.network, self.dim, layer = _feature_network(branch, loaded)
        self.network.eval()
        self.transform = Preprocess(input_size, resize).eval_transform()
        self.batch_size = batch_size
        self.name = f"{backbone}-{layer}"
        log.info("deep scorer: %s %s features (%d-D) from %s", backbone, layer, self.dim, weights)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = [im.convert("RGB") for im in images[start : start + self.batch_size]]
                batch = torch.stack([self.transform(im) for im in chunk])
                out[start : start + len(chunk)] = self.network(batch).float().numpy()
        return l2_normalise(out)


def _feature_network(branch: Any, loaded: list[str]) -> tuple[Any, int, str]:
    """(trunk + feature head, its width, the layer's name) for a loaded deep branch."""
    from torch import nn

    if "fc7" in loaded:  # the paper's BISS used a pretrained net's fc7 activations
        head = list(branch.head.children())
        fc7_end = [name for name, _ in branch.head.named_children()].index("relu7") + 1
        return nn.Sequential(branch.trunk, *head[:fc7_end]), branch.head.fc7.out_features, "fc7"
    pooled = nn.Sequential(branch.trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return pooled, int(branch.trunk_shape[0]), "pool"
