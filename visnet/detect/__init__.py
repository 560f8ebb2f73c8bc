"""Object localization: find the items in a street photo, so each can be cropped and searched."""

from visnet.detect.crops import (
    DetectedObject,
    crop_with_margin,
    query_boxes,
    select_objects,
    shop_the_look,
)
from visnet.detect.detector import (
    DEFAULT_ARCH,
    Detections,
    Detector,
    DetectorConfig,
    get_arch,
    list_archs,
)
from visnet.detect.evaluate import detection_metrics, evaluate_detector
from visnet.detect.train import DetectTrainSettings, train_detector

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
