"""Category calibration: the temperature fit, the trust threshold, and what they change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visnet.detect import Detections, Detector, DetectorConfig
from visnet.detect.calibrate import (
    calibrate,
    confidence,
    expected_calibration_error,
    fit_temperature,
    trust_threshold,
)
from visnet.detect.evaluate import GroundTruth
from visnet.service.engine import category_threshold
from visnet.service.settings import UNCALIBRATED_CATEGORY_THRESHOLD, ServiceSettings


def _sampled(temperature: float, n: int = 4000, classes: int = 6, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): T is the true answer."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    z = logits / temperature
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_temperature_fit_recovers_the_temperature_that_drew_the_labels():
    for true in (0.7, 2.5):
        logits, labels = _sampled(true)
        assert fit_temperature(logits, labels) == pytest.approx(true, rel=0.1)


def test_calibration_lowers_the_error_of_overconfident_scores():
    logits, labels = _sampled(2.5)
    correct = (logits.argmax(1) == labels).astype(float)
    before, _ = expected_calibration_error(confidence(logits, 1.0), correct)
    after, curve = expected_calibration_error(confidence(logits, 2.5), correct)
    assert after < 0.03 < before
    assert sum(curve["share"]) == pytest.approx(1.0)


def test_trust_threshold_matches_a_naive_scan():
    rng = np.random.default_rng(1)
    conf = rng.random(200)
    correct = (rng.random(200) < conf).astype(float)
    for precision in (0.8, 0.9, 0.95):
        naive = [
            t for t in sorted(conf) if correct[conf >= t].mean() >= precision
        ]  # every score from which the kept boxes are right often enough
        assert trust_threshold(conf, correct, precision) == (min(naive) if naive else None)
    assert trust_threshold(conf, np.zeros(200), 0.5) is None


def test_calibrate_matches_boxes_to_their_best_detection():
    categories = ["a", "b"]
    box, far = (10, 10, 50, 50), (200, 200, 240, 240)
    truth = GroundTruth(np.asarray([box], np.float32), ["a"])
    rng = np.random.default_rng(2)
    predictions, truths = [], []
    for i in range(40):
        sure = rng.normal(0, 1, 2) + np.array([3.0, 0.0]) * (1 if i % 4 else -1)  # right 3 in 4
        predictions.append(
            Detections(
                np.asarray([far, box, box], np.float32),
                ["a", "a", "b"],
                np.asarray([0.99, 0.9, 0.2], np.float32),  # the far box is no match
                category_logits=np.asarray([[9, 0], sure, [0, 9]], np.float32),
            )
        )
        truths.append(truth)
    found = calibrate(predictions, truths, categories, precision=0.95)
    assert found.boxes == 40 and found.accuracy == pytest.approx(0.75)
    assert found.ece_after <= found.ece_before and found.nll_after <= found.nll_before
    with pytest.raises(ValueError, match="need >= 10"):
        calibrate(predictions[:5], truths[:5], categories)


def test_temperature_moves_label_scores_but_not_labels_or_boxes(categories):
    torch.manual_seed(0)
    config = DetectorConfig(
        categories=categories, arch="mobilenet_v3_large_320_fpn", min_size=128, max_size=128
    )
    detector = Detector(config).configure(score_threshold=0.0, max_detections=10)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8))
    plain = detector.detect([image])[0]
    warm = detector.configure(label_temperature=3.0).detect([image])[0]
    assert warm.labels == plain.labels
    np.testing.assert_allclose(warm.scores, plain.scores, atol=1e-6)
    np.testing.assert_allclose(warm.boxes, plain.boxes, atol=1e-4)
    z = plain.category_logits / 3.0
    expected = np.exp(z - z.max(1, keepdims=True))
    expected = (expected / expected.sum(1, keepdims=True)).max(1)
    np.testing.assert_allclose(warm.label_scores, expected, atol=1e-5)
    with pytest.raises(ValueError, match="label_temperature"):
        DetectorConfig(categories=categories, label_temperature=0.0)


def test_service_trusts_the_calibrated_threshold_unless_told_otherwise(categories, tmp_path):
    calibrated = Detector(DetectorConfig(categories=categories, category_threshold=0.42))
    plain = Detector(DetectorConfig(categories=categories))
    paths = {"index": tmp_path / "index", "model": str(tmp_path / "model.pt")}
    unset = ServiceSettings(**paths)
    assert category_threshold(unset, calibrated) == 0.42
    assert category_threshold(unset, plain) == UNCALIBRATED_CATEGORY_THRESHOLD
    assert category_threshold(unset, None) == UNCALIBRATED_CATEGORY_THRESHOLD
    assert category_threshold(ServiceSettings(**paths, category_threshold=0.9), calibrated) == 0.9
