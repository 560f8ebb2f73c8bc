"""Detector quality on a Street2Shop-layout split: VOC mAP@0.5 and recall of the true box."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from visnet.data.splits import VAL, validation_pairs, validation_products
from visnet.data.street2shop import read_set
from visnet.detect.detector import Detections, Detector
from visnet.detect.settings import DetectTrainSettings

IOU_THRESHOLD = 0.5
# the other products of a photo (street_objects.json) count for shop the look when at least
# this share of each is in view; the trainer's default, so a model is scored on what it learnt
OTHERS_MIN_VISIBLE = DetectTrainSettings().others


@dataclass(frozen=True)
class GroundTruth:
    """The true objects of one photo: xyxy boxes (n, 4) and their category names."""

    boxes: np.ndarray
    labels: list[str]
    # the other products the photo shows (clutter), for shop the look; xyxy (m, 4)
    other_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    other_labels: list[str] = field(default_factory=list)

    def everything(self) -> GroundTruth:
        """Every product of the photo as a true box: the pair's and the others."""
        return GroundTruth(
            np.concatenate([self.boxes, self.other_boxes]), [*self.labels, *self.other_labels]
        )


def average_precision(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """VOC (2010+) AP: the area under the precision envelope over all recall points."""
    if positives == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(hits[order].astype(np.float64))
    recall = true_pos / positives
    precision = true_pos / np.arange(1, len(order) + 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def match(pred_boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
    """Which predictions hit a true box (IoU >= 0.5); each true box is claimed once, best first."""
    hits = np.zeros(len(pred_boxes), dtype=bool)
    if len(pred_boxes) == 0 or len(true_boxes) == 0:
        return hits
    iou = iou_matrix(pred_boxes, true_boxes)
    taken = np.zeros(len(true_boxes), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        best = int(np.argmax(iou[i]))
        if iou[i, best] >= IOU_THRESHOLD and not taken[best]:
            hits[i], taken[best] = True, True
    return hits


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tensor_a = torch.as_tensor(a, dtype=torch.float32).reshape(-1, 4)
    tensor_b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
    return box_iou(tensor_a, tensor_b).numpy()


def detection_metrics(
    predictions: Sequence[Detections], truths: Sequence[GroundTruth], categories: Sequence[str]
) -> dict[str, Any]:
    """mAP@0.5 (mean over categories with a true box), AP per category, and box recall@0.5.

    Box recall is the fraction of true boxes overlapped (IoU >= 0.5) by some detection of any
    class (`box_recall@0.5`), of the right class (`box_recall@0.5_class`), or by the single best
    detection of the photo (`top1_box_recall@0.5`). `product_ap@0.5` is the AP of finding the
    true boxes whatever their category (unlabelled products in a photo count against it).
    `category_accuracy` is the share of true boxes the photo's best detection finds whose
    category it names right (what the service filters the search by).

    Shop the look scores every product a photo shows, the pair's and the others (clutter):
    `all_products_ap@0.5`, `all_products_recall@0.5` (found by some detection) and
    `all_products_photos` (photos whose products are all found).
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} photos")
    ap = {c: _class_ap(predictions, truths, c) for c in categories}
    present = {c: v for c, v in ap.items() if not np.isnan(v)}
    total, any_hit, class_hit, top_hit, top_right = 0, 0, 0, 0, 0
    for pred, truth in zip(predictions, truths, strict=True):
        iou = iou_matrix(pred.boxes, truth.boxes) if len(pred) else np.zeros((0, len(truth.labels)))
        best = int(np.argmax(pred.scores)) if len(pred) else -1
        for j, label in enumerate(truth.labels):
            overlaps = iou[:, j] >= IOU_THRESHOLD
            same = np.array([p == label for p in pred.labels], dtype=bool)
            total += 1
            any_hit += bool(overlaps.any())
            class_hit += bool((overlaps & same).any())
            top_hit += bool(best >= 0 and overlaps[best])
            top_right += bool(best >= 0 and overlaps[best] and same[best])
    ratio = (lambda n: n / total) if total else (lambda n: 0.0)
    everything = [t.everything() for t in truths]
    found, products, complete = 0, 0, 0
    for pred, truth in zip(predictions, everything, strict=True):
        iou = iou_matrix(pred.boxes, truth.boxes) if len(pred) else np.zeros((0, len(truth.labels)))
        hit = np.asarray(iou >= IOU_THRESHOLD).any(axis=0)
        found += int(hit.sum())
        products += int(hit.size)
        complete += int(hit.all())
    return {
        "map@0.5": float(np.mean(list(present.values()))) if present else 0.0,
        "ap@0.5": {c: (None if np.isnan(v) else v) for c, v in ap.items()},
        "product_ap@0.5": _class_ap(predictions, truths, None),
        "box_recall@0.5": ratio(any_hit),
        "box_recall@0.5_class": ratio(class_hit),
        "top1_box_recall@0.5": ratio(top_hit),
        "category_accuracy": top_right / top_hit if top_hit else 0.0,
        "all_products_ap@0.5": _class_ap(predictions, everything, None),
        "all_products_recall@0.5": found / products if products else 0.0,
        "all_products_photos": float(complete) / len(truths) if truths else 0.0,
        "all_products": products,
        "boxes": total,
        "photos": len(truths),
    }


def _class_ap(
    predictions: Sequence[Detections], truths: Sequence[GroundTruth], category: str | None
) -> float:
    """AP of one category's boxes, or of every box whatever its category (`category` None)."""
    scores, hits, positives = [], [], 0
    for pred, truth in zip(predictions, truths, strict=True):
        mine = np.array([category in (None, p) for p in pred.labels], dtype=bool)
        true_boxes = truth.boxes[np.array([category in (None, t) for t in truth.labels], bool)]
        positives += len(true_boxes)
        scores.append(pred.scores[mine])
        hits.append(match(pred.boxes[mine], pred.scores[mine], true_boxes))
    return average_precision(np.concatenate(scores), np.concatenate(hits), positives)


def evaluate_detector(
    detector: Detector,
    data_dir: str | Path,
    split: str = "test",
    limit: int | None = None,
    score_threshold: float | None = None,
) -> dict[str, Any]:
    """Run `detector` on every street photo of `split` and score it against the true boxes.
    `split` "val" is the part of the train split `visnet detect train` holds out by default.

    Missing or unreadable photos are skipped and counted. Times are per photo, one at a time,
    decoding excluded. `score_threshold` overrides the detector's for this run.
    """
    data, truths = photo_truths(data_dir, split, limit)
    if score_threshold is not None:
        previous = detector.config.score_threshold
        detector.configure(score_threshold=score_threshold)
    try:
        predictions, kept, times, skipped = run_detector(detector, data, truths)
    finally:
        if score_threshold is not None:
            detector.configure(score_threshold=previous)
    result = detection_metrics(predictions, kept, detector.categories)
    result.update(_timing(times))
    result.update(split=split, skipped=skipped, arch=detector.config.arch)
    result["scoring"] = detector.config.scoring
    result["min_size"] = detector.config.min_size
    return result


def photo_truths(
    data_dir: str | Path, split: str, limit: int | None = None
) -> tuple[Any, dict[int, GroundTruth]]:
    """The set and its street photos of `split` with their true boxes; "val" is the part of the
    train split `visnet detect train` holds out by default."""
    data = read_set(data_dir)
    if split == VAL:  # the training photos `visnet detect train` held out (its defaults)
        defaults = DetectTrainSettings()
        held = validation_products(data, defaults.val_fraction, defaults.seed)
        truths = _truths(validation_pairs(data, held)[1], data)
    elif split in data.pairs:
        truths = _truths(data.pairs[split], data)
    else:
        raise ValueError(f"unknown split {split!r}; known: {', '.join([*data.pairs, VAL])}")
    if limit:
        truths = dict(list(truths.items())[:limit])
    return data, truths


def _truths(pairs: list[Any], data: Any) -> dict[int, GroundTruth]:
    """Photo -> its true boxes (a photo may appear in several pairs, one box each), and the
    other products it shows."""
    boxes: dict[int, list[tuple[float, ...]]] = {}
    labels: dict[int, list[str]] = {}
    for pair in pairs:
        boxes.setdefault(pair.photo, []).append(pair.bbox.as_xyxy())
        labels.setdefault(pair.photo, []).append(pair.category)
    others = data.objects_by_photo(OTHERS_MIN_VISIBLE)
    return {
        photo: GroundTruth(
            np.asarray(boxes[photo], np.float32).reshape(-1, 4),
            labels[photo],
            np.asarray([o.bbox.as_xyxy() for o in others.get(photo, [])], np.float32).reshape(
                -1, 4
            ),
            [o.category for o in others.get(photo, [])],
        )
        for photo in boxes
    }


def run_detector(
    detector: Detector, data: Any, truths: dict[int, GroundTruth]
) -> tuple[list[Detections], list[GroundTruth], list[float], int]:
    """Detect on each photo of `truths`, one at a time: predictions, the truths of the photos
    read, seconds per photo (decoding excluded), photos skipped (missing or unreadable)."""
    predictions, kept, times = [], [], []
    for photo, image in data.readable_photos(truths):
        start = time.perf_counter()
        predictions.extend(detector.detect([image]))
        times.append(time.perf_counter() - start)
        kept.append(truths[photo])
    return predictions, kept, times, len(truths) - len(kept)


def _timing(times: list[float]) -> dict[str, float]:
    if not times:
        return {"ms_per_photo_median": 0.0, "ms_per_photo_mean": 0.0}
    # the first call pays for lazy initialisation; leave it out when there is more than one
    steady = times[1:] if len(times) > 1 else times
    return {
        "ms_per_photo_median": 1000 * statistics.median(steady),
        "ms_per_photo_mean": 1000 * statistics.fmean(steady),
    }
