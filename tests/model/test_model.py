"""Tests for the backbone registry, VisNet shapes, preprocessing and the model embedder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from visnet.features.base import Embedder
from visnet.model import (
    ModelEmbedder,
    VisNet,
    VisNetConfig,
    branch_shapes,
    create_backbone,
    create_model,
    get_config,
    list_backbones,
    load_pretrained,
    untrained_embedder,
)
from visnet.model.shallow import BRANCH_A, BRANCH_B, ShallowBranches, pool_out

TINY = dict(input_size=64, resize=72, head_dim=64, deep_dim=32, embed_dim=16, dropout=0.4)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(80, 60), (50, 120), (64, 64), (200, 90)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


def test_registry_has_the_named_backbones() -> None:
    expected = {"vgg16", "alexnet", "resnet18", "resnet50"}
    assert expected | {"mobilenet_v3_small", "mobilenet_v3_large"} <= set(list_backbones())


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError, match="resnet18.*vgg16|vgg16.*resnet18"):
        create_backbone("resnet1000")
    with pytest.raises(ValueError, match="known backbones"):
        VisNetConfig(backbone="resnet1000")


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(VisNetConfig(backbone=name, **TINY)).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    out[:, 0].sum().backward()
    trunk_grad = next(model.deep.trunk.parameters()).grad
    assert trunk_grad is not None and trunk_grad.abs().sum() > 0
    assert model.shallow is not None and model.shallow.branch_a.conv.weight.grad is not None


def test_noshallow_is_deep_branch_then_projection() -> None:
    model = create_model(VisNetConfig(backbone="resnet18", shallow=False, **TINY)).eval()
    assert model.shallow is None and model.projection.in_features == 32
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_paper_branch_shapes_by_arithmetic() -> None:
    shapes = branch_shapes("paper")
    assert shapes["shallow_a"] == (56, 15, 5) and shapes["shallow_b"] == (28, 8, 5)
    assert shapes["shallow_a_dim"] == shapes["shallow_b_dim"] == 2400
    assert shapes["shallow_dim"] == 4800 and shapes["fused_dim"] == 8896
    assert shapes["embed_dim"] == 4096
    assert branch_shapes("paper-noshallow")["fused_dim"] == 4096


def _sides(branch: torch.nn.Sequential, x: torch.Tensor) -> list[int]:
    sides = []
    for layer_name in ("pool_in", "conv", "relu", "norm", "pool_out"):
        x = getattr(branch, layer_name)(x)
        if layer_name in ("pool_in", "conv", "pool_out"):
            sides.append(x.shape[-1])
    return sides


def test_paper_shallow_branches_by_forward_at_224() -> None:
    shallow = ShallowBranches(224)
    x = torch.randn(1, 3, 224, 224)
    assert _sides(shallow.branch_a, x) == [56, 15, 5]
    assert _sides(shallow.branch_b, x) == [28, 8, 5]
    out = shallow(x)
    assert out.shape == (1, 4800) and shallow.out_dim == 4800


def test_paper_model_dims_on_meta_device() -> None:
    with torch.device("meta"):
        model = VisNet(get_config("paper"))
    assert tuple(model.deep.trunk_shape) == (512, 7, 7)
    assert model.deep.head.fc6.in_features == 25088 and model.deep.head.fc8.out_features == 4096
    assert model.projection.in_features == 8896 and model.projection.out_features == 4096


@pytest.mark.parametrize("size", [*range(32, 260, 4), 97, 101, 113, 127, 150, 223, 225])
def test_caffe_pool_rule_matches_torch(size: int) -> None:
    for geometry in (BRANCH_A, BRANCH_B):
        for pool in (geometry.input_pool, geometry.output_pool):
            torch_out = F.max_pool2d(
                torch.zeros(1, 1, size, size),
                pool.kernel,
                pool.stride,
                pool.padding,
                ceil_mode=True,
            )
            assert torch_out.shape[-1] == pool_out(size, pool), (size, pool)


@pytest.mark.parametrize("size", [96, 112, 128])
def test_default_model_at_light_sizes(size: int) -> None:
    cfg = dataclasses.replace(get_config("default"), input_size=size, resize=round(size * 1.14))
    model = create_model(cfg).eval()
    with torch.no_grad():
        fused = model.fused(torch.randn(2, 3, size, size))
    assert fused.shape == (2, branch_shapes(cfg)["fused_dim"]) == (2, model.fused_dim)


def test_create_model_seed_is_deterministic_and_local() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = create_model("default", seed=7), create_model("default", seed=7)
    assert torch.rand(1) == before  # the global RNG was not consumed
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), key


def test_config_round_trip_and_errors() -> None:
    cfg = get_config("paper-alexnet")
    assert VisNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        VisNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="default-noshallow"):
        get_config("nope")
    with pytest.raises(ValueError, match="resize"):
        VisNetConfig(input_size=128, resize=100)


def test_pretrained_missing_file(tmp_path) -> None:
    model = create_model(VisNetConfig(backbone="resnet18", **TINY))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_pretrained(model, tmp_path / "resnet18.pth")


def test_pretrained_loads_trunk_and_rejects_mismatch(tmp_path) -> None:
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_model(VisNetConfig(backbone="resnet18", **TINY), pretrained=path)
    torch.testing.assert_close(
        model.deep.trunk.layer4[1].conv2.weight, source.layer4[1].conv2.weight
    )
    broken = dict(source.state_dict())
    del broken["layer1.0.conv1.weight"]
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight.*extra\.weight"):
        load_pretrained(model, path)


def test_pretrained_fills_paper_head_when_shapes_agree(tmp_path) -> None:
    source = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(source.state_dict(), path)
    cfg = dataclasses.replace(get_config("paper-alexnet"), deep_dim=8, embed_dim=8)
    model = create_model(cfg)
    assert load_pretrained(model, path) == ["trunk", "fc6", "fc7"]
    torch.testing.assert_close(model.deep.head.fc7.weight, source.classifier[4].weight)


def test_preprocess_transforms_give_model_input() -> None:
    pre = get_config("default").preprocess()
    img = _images(4)[3]
    assert pre.eval_transform()(img).shape == (3, 96, 96)
    for style in ("augment", "paper"):
        assert pre.train_transform(style)(img).shape == (3, 96, 96)
    with pytest.raises(ValueError, match="train style"):
        pre.train_transform("wild")  # type: ignore[arg-type]


def test_model_embedder_shape_norm_and_batching() -> None:
    model = create_model(VisNetConfig(backbone="mobilenet_v3_small", **TINY), seed=0)
    images = [*_images(5), _images(1)[0].convert("L")]
    one_batch = ModelEmbedder(model, batch_size=64)
    vectors = one_batch.embed(images)
    assert isinstance(one_batch, Embedder) and one_batch.dim == 16
    assert vectors.shape == (6, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    plain = ModelEmbedder(model, batch_size=4, channels_last=False)
    np.testing.assert_allclose(plain.embed(images), vectors, atol=1e-5)
    assert one_batch.embed([]).shape == (0, 16)


def test_untrained_embedder_is_reproducible() -> None:
    images = _images(3)
    a, b = untrained_embedder(seed=1), untrained_embedder(seed=1)
    np.testing.assert_array_equal(a.embed(images), b.embed(images))
    assert a.name == "untrained-default-seed1" and a.dim == get_config("default").embed_dim
