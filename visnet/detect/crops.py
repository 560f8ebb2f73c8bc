"""From detections to crops: pick the objects worth searching, cut each out with a margin.

`crop_with_margin` is the one crop of the package (margin, rounding, clamping): the service's
detector boxes, the evaluation's true and detected boxes, and training's street boxes are all
cut by it; callers differ only in the margin they pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from visnet.detect.detector import Detections
from visnet.images import crop_with_margin

__all__ = [
    "QUERY_BOXES",
    "QUERY_MARGIN",
    "SCORE_WEIGHT",
    "DetectedObject",
    "box_iou",
    "crop_with_margin",
    "query_boxes",
    "select_objects",
    "shop_the_look",
]

# How a detected box becomes a search query. All three numbers were chosen on the embedding
# model's held-out train products, never the test split: `benchmarks/detector_crops.py`
# (2026-11-24, the wave-1 model and detector) gave recall@20 87.6 for the best 3 boxes merged
# at margin 0.2, 86.7 for the best box alone, 85.7 merged at margin 0.1; true boxes 87.2.
#
# QUERY_MARGIN: context kept around a detected box when it becomes a search query, as a share
# of its width and height on each side. Chosen again for the pretrained model and detector
# (2026-12-02, `benchmarks/detector_crops.py --margins 0.0 0.1 0.2 0.3 --boxes 1`, 471 held-out
# street photos; true box 94.1 recall@1): the shopper's box 92.6 / 91.3 / 90.4 / 87.3 recall@1
# at margins 0.0 / 0.1 / 0.2 / 0.3, the best box 65.4 / 64.3 / 63.7 / 61.6. This detector's
# boxes fit the product as tightly as the labelled ones, so context only adds clutter.
QUERY_MARGIN = 0.0

# When one answer must serve a photo whose wanted object is unknown (the evaluation protocol),
# the best QUERY_BOXES detections are all searched and each product keeps its best similarity,
# less SCORE_WEIGHT per unit of log(detection score / best score): a doubtful box must match
# much better to win.
QUERY_BOXES = 3
SCORE_WEIGHT = 0.05


@dataclass(frozen=True)
class DetectedObject:
    """One object to search for: its box (xyxy pixels), category, score and category score."""

    box: tuple[float, float, float, float]
    label: str
    score: float  # how sure the detector is that this is a product
    label_score: float = 1.0  # how sure it is of `label` (see Detections.label_scores)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_objects(
    detections: Detections,
    threshold: float = 0.5,
    max_objects: int = 5,
    overlap: float = 0.7,
    keep_best: bool = True,
) -> list[DetectedObject]:
    """The best detections scoring at least `threshold`, at most `max_objects` of them.

    The detector suppresses duplicates within a category only, so one item can come back as a
    dress and as a top; a box overlapping a better one by more than `overlap` IoU is dropped.
    With none above `threshold`, `keep_best` keeps the single best detection all the same: a
    street photo holds at least one product, and the best box, even a doubtful one, is a better
    query than the whole photo (it is what `visnet eval --crops detector` measures).
    """
    if max_objects < 1:
        return []
    if keep_best and len(detections) and float(np.max(detections.scores)) < threshold:
        threshold = float(np.max(detections.scores))
    order = np.argsort(-np.asarray(detections.scores), kind="stable")
    kept: list[DetectedObject] = []
    for i in order:
        score = float(detections.scores[i])
        if score < threshold:
            break
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
        box = (x1, y1, x2, y2)
        if any(box_iou(box, k.box) > overlap for k in kept):
            continue
        label_score = float(np.asarray(detections.label_scores)[i])
        kept.append(DetectedObject(box, detections.labels[i], score, label_score))
        if len(kept) == max_objects:
            break
    return kept


def query_boxes(
    detections: Detections, top: int = QUERY_BOXES
) -> list[tuple[tuple[float, float, float, float], float]]:
    """The `top` best boxes (xyxy), each with log(its score / the best score): 0 for the best."""
    order = np.argsort(-np.asarray(detections.scores), kind="stable")[: max(0, top)]
    if not len(order):
        return []
    best = max(float(detections.scores[order[0]]), 1e-12)
    return [
        (
            tuple(float(v) for v in detections.boxes[i]),  # type: ignore[misc]
            float(np.log(max(float(detections.scores[i]), 1e-12) / best)),
        )
        for i in order
    ]


def shoppers_box(
    detections: Detections, wanted: tuple[float, float, float, float], min_iou: float = 0.5
) -> list[tuple[tuple[float, float, float, float], float]]:
    """The detected box a shopper looking for the product at `wanted` (xyxy) would click: the
    best-scoring detection covering it (IoU >= `min_iou`), else the best box; as `query_boxes`
    gives it (log relative score 0). Empty when nothing was detected."""
    if not len(detections):
        return []
    iou = np.array([box_iou(box, wanted) for box in np.asarray(detections.boxes)])
    scores = np.asarray(detections.scores, np.float64)
    on = np.nonzero(iou >= min_iou)[0]
    best = int(on[np.argmax(scores[on])]) if len(on) else int(np.argmax(scores))
    return [(tuple(float(v) for v in detections.boxes[best]), 0.0)]  # type: ignore[list-item]


def shop_the_look(
    image: Image.Image,
    detections: Detections,
    threshold: float = 0.5,
    max_objects: int = 5,
    margin: float = QUERY_MARGIN,
    whole_image_fallback: bool = True,
) -> list[tuple[DetectedObject, Image.Image]]:
    """Each selected object with its crop, ready to embed and search.

    Objects are those of `select_objects` (the best one when none reaches `threshold`). With
    nothing detected at all, the whole photo stands in as one object (label "", score 0), so a
    search still returns something, unless `whole_image_fallback` is False.
    """
    objects = select_objects(detections, threshold, max_objects)
    if not objects and whole_image_fallback:
        width, height = image.size
        return [(DetectedObject((0.0, 0.0, float(width), float(height)), "", 0.0), image)]
    return [(obj, crop_with_margin(image, obj.box, margin)) for obj in objects]
