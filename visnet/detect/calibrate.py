"""Calibrate the detector's category scores on validation photos, and choose when to trust them.

The box head's softmax is over-confident after training (it was taught on the photos it now
scores): a label score of 0.9 is right less than 9 times in 10 on new photos. Temperature scaling
(Guo et al., 2017) divides the category logits by one number fitted on held-out photos; the
ranking of categories, so the labels and the accuracy, stay as they were, only the scores move.

The service filters a search by the detected category when the label score reaches a threshold:
a wrong filter hides the right product, while an unfiltered search still finds it among the
look-alikes of every category. `category_threshold` is therefore the lowest calibrated score from
which the categories kept are right at least `precision` of the time on the validation photos.

    visnet detect calibrate --data D --model RUN/detector.pt --out models/detector.pt
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visnet.detect.detector import Detections, Detector
from visnet.detect.evaluate import (
    IOU_THRESHOLD,
    GroundTruth,
    iou_matrix,
    photo_truths,
    run_detector,
)

DEFAULT_PRECISION = 0.95
BINS = 10


@dataclass(frozen=True)
class Calibration:
    temperature: float
    threshold: float | None  # None: no score reaches the precision
    precision: float  # the target
    boxes: int  # found true boxes the fit used
    accuracy: float  # of their labels (the same before and after)
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    kept: float  # share of boxes at or above the threshold
    curve: dict[str, list[float]]  # the reliability diagram after: bin centre, accuracy, share

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def matched_logits(
    predictions: Sequence[Detections], truths: Sequence[GroundTruth]
) -> tuple[np.ndarray, np.ndarray]:
    """For every true box (the pair's and the others) found by a detection: the category logits
    of the best-scoring detection on it (what the service would label it with), and the index of
    the true category. Categories are indexed as in the detector; unknown ones are skipped."""
    rows, labels = [], []
    for pred, truth in zip(predictions, truths, strict=True):
        if not len(pred) or pred.category_logits is None:
            continue
        everything = truth.everything()
        iou = iou_matrix(pred.boxes, everything.boxes)
        for j, label in enumerate(everything.labels):
            hits = np.nonzero(iou[:, j] >= IOU_THRESHOLD)[0]
            if len(hits):
                best = hits[int(np.argmax(pred.scores[hits]))]
                rows.append(pred.category_logits[best])
                labels.append(label)
    return (np.asarray(rows, np.float64).reshape(len(rows), -1), np.asarray(labels, object))


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true categories at a temperature."""
    return float(-_log_softmax(logits, temperature)[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the NLL (a bounded scalar search over log T)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: nll(logits, targets, math.exp(log_t)), bounds=(-3.0, 3.0), method="bounded"
    )
    return float(math.exp(found.x))


def confidence(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(_log_softmax(logits, temperature).max(axis=1))


def expected_calibration_error(
    conf: np.ndarray, correct: np.ndarray, bins: int = BINS
) -> tuple[float, dict[str, list[float]]]:
    """ECE over equal-width bins, and the reliability curve (bins holding boxes only)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    curve: dict[str, list[float]] = {"confidence": [], "accuracy": [], "share": []}
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = abs(correct[inside].mean() - conf[inside].mean())
            ece += inside.mean() * gap
            curve["confidence"].append(float(conf[inside].mean()))
            curve["accuracy"].append(float(correct[inside].mean()))
            curve["share"].append(float(inside.mean()))
    return float(ece), curve


def trust_threshold(conf: np.ndarray, correct: np.ndarray, precision: float) -> float | None:
    """The lowest score t such that the boxes scoring >= t are right at least `precision` of
    the time (None when even the surest boxes are not)."""
    order = np.argsort(-conf, kind="stable")
    right = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(right >= precision)[0]
    if not len(ok):
        return None
    return float(conf[order][ok[-1]])


def calibrate(
    predictions: Sequence[Detections],
    truths: Sequence[GroundTruth],
    categories: Sequence[str],
    precision: float = DEFAULT_PRECISION,
) -> Calibration:
    logits, names = matched_logits(predictions, truths)
    index = {c: i for i, c in enumerate(categories)}
    known = np.array([n in index for n in names], bool)
    logits, targets = logits[known], np.array([index[n] for n in names[known]], np.int64)
    if len(targets) < 10:
        raise ValueError(
            f"only {len(targets)} true boxes were found on the calibration photos; need >= 10"
        )
    temperature = fit_temperature(logits, targets)
    correct = (logits.argmax(axis=1) == targets).astype(np.float64)
    before, _ = expected_calibration_error(confidence(logits, 1.0), correct)
    conf = confidence(logits, temperature)
    after, curve = expected_calibration_error(conf, correct)
    threshold = trust_threshold(conf, correct, precision)
    return Calibration(
        temperature=temperature,
        threshold=threshold,
        precision=precision,
        boxes=len(targets),
        accuracy=float(correct.mean()),
        ece_before=before,
        ece_after=after,
        nll_before=nll(logits, targets, 1.0),
        nll_after=nll(logits, targets, temperature),
        kept=float((conf >= threshold).mean()) if threshold is not None else 0.0,
        curve=curve,
    )


def calibrate_detector(
    detector: Detector,
    data_dir: str | Path,
    split: str = "val",
    precision: float = DEFAULT_PRECISION,
    limit: int | None = None,
) -> Calibration:
    """Fit `detector`'s category temperature and trust threshold on `split`'s photos and set
    them in its config (in place; save it to keep them)."""
    if detector.config.scoring != "product":
        raise ValueError("calibration needs product scoring (the category logits of each box)")
    data, truths = photo_truths(data_dir, split, limit)
    predictions, kept, _times, _skipped = run_detector(detector, data, truths)
    found = calibrate(predictions, kept, detector.categories, precision)
    detector.configure(label_temperature=found.temperature, category_threshold=found.threshold)
    return found


def plot_reliability(result: Calibration, path: str | Path) -> Path:
    """The reliability diagram after calibration, beside the diagonal, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    curve = result.curve
    ax.plot(curve["confidence"], curve["accuracy"], marker="o", label="calibrated")
    if result.threshold is not None:
        ax.axvline(result.threshold, color="tab:red", linewidth=1, label="trust threshold")
    ax.set(
        xlabel="category score",
        ylabel="share right",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"T={result.temperature:.2f}, ECE {result.ece_before:.3f} -> {result.ece_after:.3f}",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
