"""The feature-vector job: shards, resume, bad images skipped; ONNX export agrees with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visnet.data.synthetic import make_synthetic_set
from visnet.embed.job import catalog_rows, read_shards, run_embed_job
from visnet.embed.onnx import OnnxEmbedder, export_onnx
from visnet.embed.registry import create_embedder
from visnet.model import ModelEmbedder, create_model, save_checkpoint


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "set"
    make_synthetic_set(root, seed=1)
    return root


def test_job_writes_every_view_and_skips_a_bad_image(synthetic: Path, tmp_path: Path) -> None:
    rows = catalog_rows(synthetic)
    Path(rows[3].image).write_bytes(b"not an image")
    try:
        manifest = run_embed_job(synthetic, create_embedder("colour-histogram"), tmp_path / "e", 5)
    finally:
        Image.new("RGB", (64, 64), "white").save(rows[3].image)
    vectors, kept, read_manifest = read_shards(tmp_path / "e")
    assert manifest == read_manifest
    assert len(kept) == len(rows) - 1 == manifest["vectors"] == len(vectors)
    assert manifest["skipped"][0]["image"] == rows[3].image
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_job_resumes_and_refuses_another_model(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    run_embed_job(synthetic, create_embedder("colour-histogram"), out, shard_size=4)
    first = (out / "shard-00001.npy").stat().st_mtime_ns
    (out / "shard-00002.json").unlink()  # as if killed while writing shard 2
    (out / "manifest.json").unlink()
    run_embed_job(synthetic, create_embedder("colour-histogram"), out, shard_size=4)
    assert (out / "shard-00001.npy").stat().st_mtime_ns == first  # not redone
    assert json.loads((out / "manifest.json").read_text())["vectors"] == len(
        catalog_rows(synthetic)
    )
    with pytest.raises(ValueError, match="another model"):
        run_embed_job(synthetic, create_embedder("phash"), out, shard_size=4)


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "m.pt", create_model("default", seed=0))
    onnx_path = export_onnx(checkpoint, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)) for _ in range(3)]
    runtime = OnnxEmbedder(onnx_path)
    reference = ModelEmbedder.from_checkpoint(checkpoint)
    assert runtime.fingerprint == reference.fingerprint
    assert np.abs(runtime.embed(images) - reference.embed(images)).max() < 1e-4
