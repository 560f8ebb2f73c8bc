"""Object localization: find the items in a street photo, so each can be cropped and searched.

Names load on first use (PEP 562): serving imports the detector and its crops, never the trainer,
and the command line reads `visnet.detect.settings` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time each name loads on first use
    from visnet.detect.crops import (
        DetectedObject,
        crop_with_margin,
        query_boxes,
        select_objects,
        shop_the_look,
    )
    from visnet.detect.detector import Detections, Detector, DetectorConfig, get_arch, list_archs
    from visnet.detect.evaluate import detection_metrics, evaluate_detector
    from visnet.detect.settings import DEFAULT_ARCH, DetectTrainSettings
    from visnet.detect.train import train_detector

_HOMES = {
    "DEFAULT_ARCH": "settings",
    "DetectTrainSettings": "settings",
    "DetectedObject": "crops",
    "crop_with_margin": "crops",
    "query_boxes": "crops",
    "select_objects": "crops",
    "shop_the_look": "crops",
    "Detections": "detector",
    "Detector": "detector",
    "DetectorConfig": "detector",
    "get_arch": "detector",
    "list_archs": "detector",
    "detection_metrics": "evaluate",
    "evaluate_detector": "evaluate",
    "train_detector": "train",
}

__all__ = [
    "DEFAULT_ARCH",
    "DetectTrainSettings",
    "DetectedObject",
    "Detections",
    "Detector",
    "DetectorConfig",
    "crop_with_margin",
    "detection_metrics",
    "evaluate_detector",
    "get_arch",
    "list_archs",
    "query_boxes",
    "select_objects",
    "shop_the_look",
    "train_detector",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'visnet.detect' has no attribute {name!r}")
    return getattr(importlib.import_module(f"visnet.detect.{home}"), name)
