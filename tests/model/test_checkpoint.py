"""Tests for self-describing checkpoints, fingerprints and loading an embedder from a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visnet.model import (
    ModelEmbedder,
    VisNetConfig,
    create_model,
    fingerprint,
    load_model,
    save_checkpoint,
)

CONFIG = VisNetConfig(
    backbone="mobilenet_v3_small", input_size=64, resize=72, deep_dim=32, embed_dim=16
)


@pytest.fixture(scope="module")
def model():
    return create_model(CONFIG, seed=0).eval()


def _batch() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_round_trip_gives_identical_embeddings(model, tmp_path) -> None:
    extra = {"step": 12, "train": {"lr": 0.01, "loss": "triplet"}, "data": "abc123"}
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, extra=extra)
    loaded, meta = load_model(path)
    assert loaded.config == CONFIG and not loaded.training
    assert meta["extra"] == extra and meta["stored_dtype"] == "float32"
    with torch.no_grad():
        torch.testing.assert_close(loaded(_batch()), model(_batch()), rtol=0, atol=0)
    assert meta["fingerprint"] == fingerprint(model) == fingerprint(path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left


def test_half_precision_release_file(model, tmp_path) -> None:
    full = save_checkpoint(tmp_path / "full.pt", model)
    half = save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, meta = load_model(half)
    assert meta["stored_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(_batch()), model(_batch()), rtol=0, atol=2e-2)
    assert fingerprint(half) == fingerprint(loaded) != fingerprint(model)


def test_fingerprint_changes_with_weights(model) -> None:
    other = create_model(CONFIG, seed=1)
    assert fingerprint(other) != fingerprint(model)
    assert len(fingerprint(model)) == 16


def test_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable VisNet checkpoint"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a VisNet checkpoint"):
        load_model(foreign)


def test_save_refuses_unloadable_extra_and_wrong_config(model, tmp_path) -> None:
    with pytest.raises(TypeError, match=r"extra\['score'\]"):
        save_checkpoint(tmp_path / "a.pt", model, extra={"score": np.float32(1.0)})
    with pytest.raises(ValueError, match="does not match"):
        save_checkpoint(tmp_path / "b.pt", model, VisNetConfig(), {})
    assert not list(tmp_path.iterdir())


def test_optimizer_state_survives(tmp_path) -> None:
    model = create_model(CONFIG, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(_batch()).sum().backward()
    opt.step()
    opt.zero_grad()
    path = save_checkpoint(tmp_path / "m.pt", model, extra={"optimizer": opt.state_dict()})
    _, meta = load_model(path)
    restored = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    restored.load_state_dict(meta["extra"]["optimizer"])
    assert restored.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_embedder_from_checkpoint(model, tmp_path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", model)
    images = [Image.new("RGB", (90, 70), (200, 30, 30)), Image.new("RGB", (50, 80), (0, 90, 200))]
    from_file = ModelEmbedder.from_checkpoint(path)
    assert fingerprint(from_file.model) == fingerprint(path)  # channels-last layout: same hash
    np.testing.assert_array_equal(from_file.embed(images), ModelEmbedder(model).embed(images))
    assert from_file.name == f"visnet-mobilenet_v3_small-{fingerprint(path)[:8]}"
