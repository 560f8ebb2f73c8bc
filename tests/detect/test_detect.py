"""Tests for visnet.detect: detector wrapper, training and resume, metrics, crops, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops.misc import FrozenBatchNorm2d
from typer.testing import CliRunner

from visnet.data.street2shop import read_set
from visnet.detect import (
    Detections,
    Detector,
    DetectorConfig,
    crop_with_margin,
    detection_metrics,
    evaluate_detector,
    get_arch,
    list_archs,
    query_boxes,
    select_objects,
    shop_the_look,
    train_detector,
)
from visnet.detect.detector import load_backbone_weights, product_boxes, to_tensor
from visnet.detect.evaluate import GroundTruth, average_precision
from visnet.detect.train import TrainPhotos, train_step

FAST = {"arch": "mobilenet_v3_large_320_fpn", "min_size": 128, "max_size": 128}
TRAIN = {**FAST, "batch_size": 1, "threads": 1, "progress": False, "checkpoint_every": 1}


def _detector(categories, **settings) -> Detector:
    torch.manual_seed(0)
    config = DetectorConfig(categories=categories, arch=FAST["arch"], min_size=128, max_size=128)
    return Detector(config).configure(**settings)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ------------------------------------------------------------------------------------- detector


def test_registry_names_and_unknown_arch():
    assert {"mobilenet_v3_large_fpn", "mobilenet_v3_large_320_fpn", "resnet50_fpn"} <= set(
        list_archs()
    )
    with pytest.raises(ValueError, match="known: .*mobilenet_v3_large_fpn"):
        get_arch("yolo")
    with pytest.raises(ValueError, match="unknown detector architecture"):
        DetectorConfig(categories=("a",), arch="yolo")


def test_config_takes_arch_defaults():
    config = DetectorConfig(categories=("a", "b"))
    spec = get_arch(config.arch)
    assert (config.min_size, config.max_size) == (spec.min_size, spec.max_size)
    assert DetectorConfig.from_dict(config.to_dict()) == config


def test_detect_types_shapes_and_order(categories):
    detector = _detector(categories, score_threshold=0.0, max_detections=7)
    images = [_image(160, 120), _image(90, 140, seed=1)]
    results = detector.detect(images)
    assert len(results) == 2 and detector.detect([]) == []
    for result, image in zip(results, images, strict=True):
        assert isinstance(result, Detections)
        assert 0 < len(result) <= 7
        assert result.boxes.dtype == np.float32 and result.boxes.shape == (len(result), 4)
        assert result.scores.dtype == np.float32 and result.scores.shape == (len(result),)
        assert all(label in categories for label in result.labels)
        assert np.all(np.diff(result.scores) <= 0)
        width, height = image.size
        assert result.boxes[:, [0, 2]].max() <= width and result.boxes[:, [1, 3]].max() <= height


def test_product_scoring_ranks_boxes_by_any_product_not_by_one_category(categories):
    # Two proposals, no box regression. A: background 0.2, the rest split between two
    # categories (0.4 each). B: background 0.5, one category 0.5. As a product A is surer
    # (0.8 > 0.5); per category B is (0.5 > 0.4), torchvision's own ranking.
    heads = _detector(categories, score_threshold=0.01).model.roi_heads
    proposals = [torch.tensor([[10.0, 10.0, 60.0, 60.0], [70.0, 20.0, 110.0, 90.0]])]
    probs = torch.full((2, len(categories) + 1), 1e-6)
    probs[0, [0, 1, 2]] = torch.tensor([0.2, 0.4, 0.4])
    probs[1, [0, 3]] = torch.tensor([0.5, 0.5])
    logits, regression = probs.log(), torch.zeros(2, 4 * (len(categories) + 1))
    (found,) = product_boxes(heads, logits, regression, proposals, [(128, 128)])
    assert torch.allclose(found["scores"], torch.tensor([0.8, 0.5]), atol=1e-4)
    assert torch.allclose(found["boxes"], proposals[0]) and found["labels"][1].item() == 3
    # the label's probability given a product: 0.4 / 0.8 and 0.5 / 0.5
    assert torch.allclose(found["label_scores"], torch.tensor([0.5, 1.0]), atol=1e-4)
    _, class_scores, class_labels = heads.postprocess_detections(
        logits, regression, proposals, [(128, 128)]
    )
    assert class_scores[0][0].item() == pytest.approx(0.5, abs=1e-4)
    assert class_labels[0][0].item() == 3 and len(class_scores[0]) == 3  # a box per category


def test_box_voting_moves_a_kept_box_to_the_score_weighted_mean_of_its_overlapping_proposals(
    categories,
):
    # Three proposals, no regression: A (product 0.8) and B (0.4) overlap by IoU 0.81, so NMS
    # keeps A alone; C (0.6) lies apart. Voting at IoU 0.7 moves A to (0.8 A + 0.4 B) / 1.2;
    # C, with no neighbour, stays; at 0.9 nothing overlaps enough and nothing moves.
    heads = _detector(categories, score_threshold=0.01).model.roi_heads
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [15.0, 10.0, 65.0, 60.0], [80, 80, 120, 120]])
    probs = torch.full((3, len(categories) + 1), 1e-6)
    probs[:, 0] = torch.tensor([0.2, 0.6, 0.4])
    probs[:, 1] = 1 - probs[:, 0]
    logits, regression = probs.log(), torch.zeros(3, 4 * (len(categories) + 1))
    plain, voted, strict = (
        product_boxes(heads, logits, regression, [boxes], [(128, 128)], box_voting=t)[0]
        for t in (0.0, 0.7, 0.9)
    )
    assert torch.equal(plain["boxes"], boxes[[0, 2]])
    assert torch.allclose(strict["boxes"], boxes[[0, 2]])
    mean = (0.8 * boxes[0] + 0.4 * boxes[1]) / 1.2
    assert torch.allclose(voted["boxes"], torch.stack([mean, boxes[2]]), atol=1e-3)
    assert torch.allclose(voted["scores"], plain["scores"]) and voted["labels"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="box_voting"):
        DetectorConfig(categories=("a",), box_voting=1.0)


def test_class_scoring_is_torchvisions_own_output(categories):
    detector = _detector(categories, score_threshold=0.0, max_detections=20, scoring="class")
    image = _image(160, 120)
    found = detector.detect([image])[0]
    with torch.inference_mode():
        (reference,) = detector.model([to_tensor(image)])
    order = torch.argsort(reference["scores"], descending=True, stable=True)
    assert np.allclose(found.scores, reference["scores"][order].numpy(), atol=1e-6)
    assert np.allclose(found.boxes, reference["boxes"][order].numpy(), atol=1e-4)
    assert np.array_equal(found.label_scores, found.scores)


def test_scoring_is_configurable_and_checked(categories):
    detector = _detector(categories, score_threshold=0.0, max_detections=50)
    image = _image(160, 120)
    product = detector.detect([image])[0]
    per_class = detector.configure(scoring="class").detect([image])[0]
    assert detector.config.scoring == "class" and len(per_class) and len(product)
    # a box's product score is at least any single category's score for it
    assert product.scores[0] >= per_class.scores[0] - 1e-6
    assert np.all((product.label_scores > 0) & (product.label_scores <= 1 + 1e-6))
    assert detector.configure(scoring="product").detect([image])[0].scores[0] == product.scores[0]
    with pytest.raises(ValueError, match="scoring"):
        DetectorConfig(categories=categories, scoring="objectness")


def test_checkpoint_round_trip(tmp_path, categories):
    detector = _detector(categories, score_threshold=0.0)
    image = _image(128, 128)
    expected = detector.detect([image])[0]
    path = detector.save(tmp_path / "d.pt", extra={"step": 3})
    loaded = Detector.load(path)
    assert loaded.config == detector.config and loaded.metadata == {"step": 3}
    got = loaded.detect([image])[0]
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-4)
    assert got.labels == expected.labels
    half = Detector.load(detector.save(tmp_path / "h.pt", half=True))
    assert next(half.model.parameters()).dtype == torch.float32
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * path.stat().st_size
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_missing_or_foreign_weight_files(tmp_path, categories):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Detector.load(tmp_path / "nope.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a VisNet detector checkpoint"):
        Detector.load(tmp_path / "other.pt")
    detector = _detector(categories)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_backbone_weights(detector.model, FAST["arch"], tmp_path / "backbone.pt")


def test_backbone_weights_load_from_local_file(tmp_path, data_dir, categories):
    import torchvision

    torch.manual_seed(1)
    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "mnv3.pt")
    detector = _detector(categories)
    assert load_backbone_weights(detector.model, FAST["arch"], tmp_path / "mnv3.pt") > 0
    first = detector.model.backbone.body["0"][0].weight
    assert torch.equal(first, classifier.features[0][0].weight)
    trained = Detector.load(
        train_detector(
            data_dir,
            tmp_path / "run",
            steps=1,
            pretrained_backbone=str(tmp_path / "mnv3.pt"),
            **TRAIN,
        )
    )
    assert trained.config.frozen_batchnorm
    assert isinstance(trained.model.backbone.body["0"][1], FrozenBatchNorm2d)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v3_large"):
        load_backbone_weights(detector.model, FAST["arch"], tmp_path / "r18.pt")


# ------------------------------------------------------------------------------------- training


def test_training_lowers_the_loss_on_a_fixed_batch(data_dir, categories):
    detector = _detector(categories)
    images, targets = TrainPhotos(read_set(data_dir), list(categories)).batch(
        2, np.random.default_rng(0), flip=0.5
    )
    optimizer = torch.optim.SGD(detector.model.parameters(), lr=0.01, momentum=0.9)
    losses = [train_step(detector.model, optimizer, images, targets)["loss"] for _ in range(8)]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


def test_flip_moves_the_box_with_the_pixels(data_dir, categories):
    photos = TrainPhotos(read_set(data_dir), list(categories))
    plain, plain_t = photos.batch(1, np.random.default_rng(5), flip=0.0)
    flipped, flipped_t = photos.batch(1, np.random.default_rng(5), flip=1.0)
    width = plain[0].shape[-1]
    torch.testing.assert_close(flipped[0], plain[0].flip(-1))
    x1, y1, x2, y2 = plain_t[0]["boxes"][0].tolist()
    assert flipped_t[0]["boxes"][0].tolist() == pytest.approx([width - x2, y1, width - x1, y2])


def test_more_steps_extend_a_finished_run_and_other_settings_are_refused(tmp_path, data_dir):
    out = tmp_path / "run"
    first = train_detector(data_dir, out, steps=2, seed=3, **TRAIN)
    assert Detector.load(first).metadata["step"] == 2
    history = (out / "history.jsonl").read_text().splitlines()
    extended = Detector.load(train_detector(data_dir, out, steps=4, seed=3, **TRAIN))
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert lines[:2] == history  # continued, not restarted
    assert extended.metadata["step"] == 4
    with pytest.raises(ValueError, match="differing: lr"):
        train_detector(data_dir, out, steps=5, seed=3, lr=0.5, **TRAIN)


def test_a_run_saved_before_a_config_field_existed_still_resumes(tmp_path, data_dir):
    """last.pt from an older VisNet lacks the config fields added since (here the calibration's
    two): they take their defaults, so the run extends instead of being refused."""
    out = tmp_path / "run"
    train_detector(data_dir, out, steps=2, seed=3, **TRAIN)
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    for added in ("label_temperature", "category_threshold"):
        del saved["config"][added]
    torch.save(saved, out / "last.pt")
    extended = Detector.load(train_detector(data_dir, out, steps=3, seed=3, **TRAIN))
    assert extended.metadata["step"] == 3


def test_resume_after_a_kill_matches_a_straight_run(tmp_path, data_dir, monkeypatch):
    import visnet.detect.train as train_module

    straight = Detector.load(train_detector(data_dir, tmp_path / "straight", steps=4, **TRAIN))
    calls = []

    def dies_on_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", dies_on_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train_detector(data_dir, tmp_path / "killed", steps=4, **TRAIN)
    monkeypatch.setattr(train_module, "train_step", train_step)
    resumed = Detector.load(train_detector(data_dir, tmp_path / "killed", steps=4, **TRAIN))
    for (key, a), b in zip(
        resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=key)


# -------------------------------------------------------------------------------------- metrics


def _truth(*boxes_and_labels) -> GroundTruth:
    boxes = np.asarray([b for b, _ in boxes_and_labels], np.float32).reshape(-1, 4)
    return GroundTruth(boxes, [label for _, label in boxes_and_labels])


def _pred(*rows) -> Detections:
    boxes = np.asarray([r[0] for r in rows], np.float32).reshape(-1, 4)
    return Detections(boxes, [r[1] for r in rows], np.asarray([r[2] for r in rows], np.float32))


BOX_A, BOX_B = (10, 10, 50, 50), (60, 20, 100, 90)


def test_metrics_perfect_and_empty():
    truths = [_truth((BOX_A, "a")), _truth((BOX_B, "b"))]
    perfect = detection_metrics([_pred((BOX_A, "a", 0.9)), _pred((BOX_B, "b", 0.8))], truths, "ab")
    assert perfect["map@0.5"] == pytest.approx(1.0)
    assert perfect["box_recall@0.5"] == perfect["box_recall@0.5_class"] == 1.0
    empty = detection_metrics([Detections.empty(), Detections.empty()], truths, ["a", "b", "c"])
    assert empty["map@0.5"] == 0.0 and empty["box_recall@0.5"] == 0.0
    assert empty["ap@0.5"]["c"] is None  # no true box of c: left out of the mean


def test_metrics_hand_worked_example():
    truths = [_truth((BOX_A, "a")), _truth((BOX_A, "a")), _truth((BOX_B, "b"))]
    predictions = [
        _pred((BOX_A, "a", 0.9)),
        _pred((BOX_B, "a", 0.8), (BOX_A, "a", 0.7)),  # a miss ranked above the hit
        _pred((BOX_B, "a", 0.6)),  # right place, wrong class
    ]
    result = detection_metrics(predictions, truths, ["a", "b"])
    # class a: precision 1, 1/2, 2/3, 2/4 at recall .5, .5, 1, 1 -> AP = .5 * 1 + .5 * 2/3
    assert result["ap@0.5"]["a"] == pytest.approx(0.5 + 1 / 3)
    assert result["ap@0.5"]["b"] == 0.0
    assert result["map@0.5"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert result["box_recall@0.5"] == 1.0
    assert result["box_recall@0.5_class"] == pytest.approx(2 / 3)
    assert result["top1_box_recall@0.5"] == pytest.approx(2 / 3)
    # any category: hit, miss, hit, hit -> precision 1, 1/2, 2/3, 3/4 at recall 1/3 .. 1; the
    # envelope lifts 2/3 to 3/4 -> AP = 1/3 * 1 + 2/3 * 3/4
    assert result["product_ap@0.5"] == pytest.approx(1 / 3 + 1 / 2)


def test_shop_the_look_scores_every_product_of_a_photo():
    two = GroundTruth(
        np.asarray([BOX_A], np.float32), ["a"], np.asarray([BOX_B], np.float32), ["b"]
    )
    alone = _truth((BOX_A, "a"))
    predictions = [
        _pred((BOX_A, "a", 0.9), (BOX_B, "b", 0.8)),  # both products of the photo found
        _pred((BOX_A, "b", 0.7)),  # found, wrong category
    ]
    result = detection_metrics(predictions, [two, alone], ["a", "b"])
    assert result["all_products"] == 3
    assert result["all_products_recall@0.5"] == pytest.approx(1.0)
    assert result["all_products_photos"] == pytest.approx(1.0)
    assert result["all_products_ap@0.5"] == pytest.approx(1.0)
    # on the pairs' boxes alone the clutter box is a false positive ranked above a hit
    assert result["product_ap@0.5"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["category_accuracy"] == pytest.approx(0.5)
    missed = detection_metrics([_pred((BOX_A, "a", 0.9)), Detections.empty()], [two, alone], "ab")
    assert missed["all_products_recall@0.5"] == pytest.approx(1 / 3)
    assert missed["all_products_photos"] == 0.0


def test_training_learns_the_other_products_of_a_photo(data_dir, categories):
    from dataclasses import replace

    from visnet.data.street2shop import StreetObject

    data = read_set(data_dir)
    pair = data.pairs["train"][0]
    other = replace(pair.bbox, left=0, top=0)
    data.objects = [
        StreetObject(pair.photo, None, categories[-1], other, 0.9),
        StreetObject(pair.photo, None, categories[0], other, 0.3),  # mostly hidden: left out
    ]
    photos = {p.path: p for p in TrainPhotos(data, list(categories)).photos}
    mine = photos[data.photo_path(pair.photo)]
    assert len(mine.boxes) == 2 and mine.labels[-1] == len(categories)
    only_pairs = TrainPhotos(data, list(categories), others_min_visible=1.01).photos
    assert all(len(p.boxes) == 1 for p in only_pairs)


def test_average_precision_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    scores, hits = rng.random(30), rng.random(30) < 0.4
    positives = int(hits.sum()) + 3
    order = np.argsort(-scores)
    points = []
    for k in range(1, 31):
        chosen = hits[order[:k]]
        points.append((chosen.sum() / positives, chosen.mean()))
    naive = 0.0
    for i, (recall, _) in enumerate(points):
        previous = points[i - 1][0] if i else 0.0
        naive += (recall - previous) * max(p for r, p in points[i:])
    assert average_precision(scores, hits, positives) == pytest.approx(naive)


def test_evaluate_detector_on_the_synthetic_set(data_dir, categories):
    result = evaluate_detector(_detector(categories), data_dir, split="test", score_threshold=0.0)
    assert result["photos"] == len(read_set(data_dir).pairs["test"]) and result["skipped"] == 0
    for key in ("map@0.5", "box_recall@0.5", "box_recall@0.5_class", "top1_box_recall@0.5"):
        assert 0.0 <= result[key] <= 1.0
    assert result["ms_per_photo_median"] > 0
    with pytest.raises(ValueError, match="unknown split"):
        evaluate_detector(_detector(categories), data_dir, split="dev")


def test_training_holds_out_the_photos_of_validation_products(data_dir, categories):
    from visnet.data.splits import validation_pairs, validation_products
    from visnet.detect.settings import DetectTrainSettings

    data = read_set(data_dir)
    defaults = DetectTrainSettings()
    held = validation_products(data, defaults.val_fraction, defaults.seed)
    train, val = validation_pairs(data, held)
    assert held and val and len(train) + len(val) == len(data.pairs["train"])
    val_photos = {pair.photo for pair in val}
    assert not val_photos & {pair.photo for pair in train}  # no photo on both sides
    assert {pair.product for pair in train}.isdisjoint(held)
    photos = TrainPhotos(data, list(categories), pairs=train)
    assert {data.photo_path(p) for p in val_photos}.isdisjoint({ph.path for ph in photos.photos})
    # `--split val` scores exactly the held-out photos
    result = evaluate_detector(_detector(categories), data_dir, split="val", score_threshold=0.0)
    assert result["photos"] == len(val_photos) and result["split"] == "val"


# ---------------------------------------------------------------------------------------- crops


def test_crop_with_margin_clips_to_the_image():
    image = _image(100, 80)
    assert crop_with_margin(image, (10, 10, 50, 30), margin=0.1).size == (48, 24)
    assert crop_with_margin(image, (0, 0, 100, 80), margin=0.5).size == (100, 80)
    assert crop_with_margin(image, (90, 70, 120, 95), margin=0.0).size == (10, 10)
    assert crop_with_margin(image, (200, 200, 300, 300)).size == (1, 1)
    assert crop_with_margin(image, (30, 30, 30, 30)).size == (1, 1)
    with pytest.raises(ValueError, match="margin"):
        crop_with_margin(image, (0, 0, 10, 10), margin=-0.1)


def test_box_overlaps_tells_a_box_off_the_photo():
    from visnet.images import box_overlaps

    assert box_overlaps((90, 70, 120, 95), (100, 80))
    assert not box_overlaps((200, 200, 300, 300), (100, 80))
    assert not box_overlaps((30, 30, 30, 40), (100, 80))  # no area
    assert not box_overlaps((-20, 10, 0, 20), (100, 80))  # touches the edge only


def test_query_boxes_give_the_best_boxes_with_log_relative_scores():
    found = Detections(
        boxes=np.array([[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 4, 4]], np.float32),
        labels=["a", "b", "c"],
        scores=np.array([0.2, 0.8, 0.4], np.float32),
    )
    chosen = query_boxes(found, top=2)
    assert [box for box, _ in chosen] == [(1.0, 1.0, 9.0, 9.0), (2.0, 2.0, 4.0, 4.0)]
    assert [round(log, 4) for _, log in chosen] == [0.0, round(float(np.log(0.5)), 4)]
    assert query_boxes(Detections.empty()) == [] and query_boxes(found, top=0) == []


def test_the_shoppers_box_is_the_best_detection_on_the_product():
    from visnet.detect.crops import shoppers_box

    found = Detections(
        boxes=np.array([[0, 0, 50, 50], [60, 60, 100, 100], [62, 58, 101, 99]], np.float32),
        labels=["a", "b", "c"],
        scores=np.array([0.9, 0.5, 0.7], np.float32),
    )
    assert shoppers_box(found, (60, 60, 100, 100)) == [((62.0, 58.0, 101.0, 99.0), 0.0)]
    assert shoppers_box(found, (200, 200, 240, 240)) == [((0.0, 0.0, 50.0, 50.0), 0.0)]
    assert shoppers_box(Detections.empty(), (0, 0, 1, 1)) == []


def test_select_objects_and_shop_the_look():
    detections = _pred(
        (BOX_A, "dress", 0.9),
        ((11, 11, 50, 50), "top", 0.8),
        (BOX_B, "bag", 0.6),
        (BOX_A, "hat", 0.2),
    )
    chosen = select_objects(detections, threshold=0.5, max_objects=5)
    assert [o.label for o in chosen] == ["dress", "bag"]  # the "top" duplicates the dress
    assert [o.label for o in select_objects(detections, 0.5, max_objects=1)] == ["dress"]
    image = _image(120, 100)
    pairs = shop_the_look(image, detections, threshold=0.5, margin=0.0)
    assert [crop.size for _, crop in pairs] == [(40, 40), (40, 70)]
    ((whole, crop),) = shop_the_look(image, Detections.empty())
    assert whole.label == "" and crop.size == image.size
    assert shop_the_look(image, Detections.empty(), whole_image_fallback=False) == []


def test_select_objects_keeps_the_best_doubtful_box_rather_than_none():
    doubtful = _pred((BOX_B, "bag", 0.3), (BOX_A, "hat", 0.2))
    assert [o.label for o in select_objects(doubtful, threshold=0.5)] == ["bag"]
    assert select_objects(doubtful, threshold=0.5, keep_best=False) == []
    ((obj, crop),) = shop_the_look(_image(120, 100), doubtful, threshold=0.5, margin=0.0)
    assert (obj.label, crop.size) == ("bag", (40, 70))  # the box, not the whole photo


# ------------------------------------------------------------------------------------------ CLI


def test_cli_train_and_eval(tmp_path, data_dir):
    from visnet.cli import app

    runner = CliRunner()
    out = tmp_path / "cli-run"
    args = ["--data", str(data_dir), "--out", str(out), "--arch", FAST["arch"], "--steps", "1"]
    args += ["--batch-size", "1", "--min-size", "128", "--max-size", "128", "--threads", "1"]
    trained = runner.invoke(app, ["detect", "train", *args])
    assert trained.exit_code == 0, trained.output
    metrics = tmp_path / "m.json"
    evaluated = runner.invoke(
        app,
        ["detect", "eval", "--data", str(data_dir), "--model", str(out / "detector.pt")]
        + ["--out", str(metrics), "--limit", "2"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(metrics.read_text())["photos"] == 2
    missing = runner.invoke(
        app, ["detect", "eval", "--data", str(data_dir), "--model", str(tmp_path / "x.pt")]
    )
    assert missing.exit_code == 2 and "not found" in missing.output


# ---------------------------------------------------------------------------------- street boxes


def test_street_boxes_are_each_pairs_shoppers_box_and_survive_the_file(
    tmp_path, data_dir, categories
):
    import shutil

    from visnet.detect.crops import box_iou, shoppers_box
    from visnet.detect.street_boxes import (
        detect_street_boxes,
        read_street_boxes,
        write_street_boxes,
    )
    from visnet.images import load_image

    root = tmp_path / "set"
    shutil.copytree(data_dir, root)
    data = read_set(root)
    pairs = data.pairs["test"]
    broken = pairs[0].photo
    data.photo_path(broken).write_bytes(b"not an image")  # skipped, the rest still written
    detector = _detector(categories, score_threshold=0.0)
    found = list(detect_street_boxes(detector, data, "test"))
    wanted = [p for p in pairs if p.photo != broken]
    # every readable pair once (at score 0 the untrained detector always finds something)
    assert sorted((b.photo, b.product) for b in found) == sorted(
        (p.photo, p.product) for p in wanted
    )
    for row in found[:3]:  # the reference: the shopper's box of the photo's own detections
        pair = next(p for p in wanted if (p.photo, p.product) == (row.photo, row.product))
        detections = detector.detect([load_image(data.photo_path(row.photo))])[0]
        ((box, _),) = shoppers_box(detections, pair.bbox.as_xyxy())
        assert row.box.as_xyxy() == pytest.approx(box, abs=1e-3)
        assert row.iou == pytest.approx(box_iou(box, pair.bbox.as_xyxy()))
    path = tmp_path / "boxes.jsonl"
    assert write_street_boxes(path, found) == len(found)
    back = read_street_boxes(path)
    assert [(b.photo, b.product) for b in back] == [(b.photo, b.product) for b in found]
    assert back[0].box.as_xyxy() == pytest.approx(found[0].box.as_xyxy(), abs=0.05)
    with pytest.raises(ValueError, match="no street photos in split"):
        next(detect_street_boxes(detector, data, "dev"))


def test_a_malformed_street_box_file_names_its_line(tmp_path):
    from visnet.detect.street_boxes import read_street_boxes
    from visnet.io import JsonLinesError

    good = {"photo": 1, "product": 2, "box": {"left": 0, "top": 0, "width": 5, "height": 5}}
    path = tmp_path / "boxes.jsonl"
    path.write_text(json.dumps({**good, "iou": 0.9}) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(JsonLinesError, match="line 2: not a street box"):
        read_street_boxes(path)
    path.write_text(json.dumps({**good, "iou": 1, "box": {**good["box"], "width": 0}}) + "\n")
    with pytest.raises(JsonLinesError, match="line 1: .*empty box"):
        read_street_boxes(path)
    with pytest.raises(FileNotFoundError, match="visnet detect boxes"):
        read_street_boxes(tmp_path / "missing.jsonl")


def test_detect_boxes_with_no_readable_photo_fails_and_writes_nothing(
    tmp_path, data_dir, categories
):
    import shutil

    from visnet.cli import app

    root = tmp_path / "set"
    shutil.copytree(data_dir, root)
    data = read_set(root)
    for pair in data.pairs["test"]:
        data.photo_path(pair.photo).write_bytes(b"not an image")
    model = tmp_path / "detector.pt"
    _detector(categories).save(model)
    out = tmp_path / "boxes.jsonl"
    args = ["detect", "boxes", "--data", str(root), "--model", str(model), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--split", "test"])
    assert result.exit_code != 0 and "no boxes" in result.output
    assert not out.exists()
