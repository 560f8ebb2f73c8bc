"""The embedding pipeline against a naive loop; the feature-vector job (shards, resume, bad images
skipped); ONNX export agrees with torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visnet.data.synthetic import make_synthetic_set
from visnet.embed.job import catalog_rows, read_shards, run_embed_job
from visnet.embed.onnx import OnnxEmbedder, export_onnx
from visnet.embed.pipeline import (
    MISSING,
    OUTSIDE,
    Item,
    PipelineSettings,
    embed_items,
    run_pipeline,
)
from visnet.embed.registry import create_embedder
from visnet.features.colour import ColourHistogram
from visnet.images import crop_with_margin, load_image
from visnet.model import ModelEmbedder, create_model, save_checkpoint


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "set"
    make_synthetic_set(root, seed=1)
    return root


# ------------------------------------------------------------------------------ the pipeline


def _mixed_items(synthetic: Path, tmp_path: Path) -> list[Item]:
    """Files, bytes, a decoded image, crops with and without a margin, and three bad items."""
    files = [Path(row.image) for row in catalog_rows(synthetic)[:7]]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    return [
        *(Item(i, path) for i, path in enumerate(files[:4])),
        Item(4, files[4].read_bytes()),
        Item(5, load_image(files[5])),
        Item(6, files[6], box=(5.5, 8, 40.2, 50), margin=0.0),
        Item(7, files[6], box=(10, 10, 30, 30), margin=0.2),
        Item("missing", None),
        Item("bad", tmp_path / "bad.jpg"),
        Item("outside", files[0], box=(500, 500, 600, 600)),
        Item(8, files[0], box=(-10, -10, 20, 20), margin=0.5),
    ]


def _naive(item: Item) -> Image.Image:
    image = item.source if isinstance(item.source, Image.Image) else load_image(item.source)
    return image if item.box is None else crop_with_margin(image, item.box, item.margin)


def test_pipeline_matches_a_naive_loop_and_skips_bad_items(synthetic: Path, tmp_path: Path) -> None:
    items = _mixed_items(synthetic, tmp_path)
    embedder = ColourHistogram()
    settings = PipelineSettings(batch_size=3, threads=2, prefetch=1)  # batches straddle the bad
    done = embed_items(items, embedder, settings)
    good = [item for item in items if isinstance(item.key, int)]
    assert done.keys == [item.key for item in good]  # input order kept across threads
    assert np.array_equal(done.single(), embedder.embed([_naive(item) for item in good]))
    reasons = {s.key: s.reason for s in done.skipped}
    assert reasons == {
        "missing": MISSING,
        "bad": "unreadable image (not_an_image)",
        "outside": OUTSIDE,
    }


def test_pipeline_runs_several_embedders_over_one_decode(synthetic: Path) -> None:
    items = [Item(i, row.image) for i, row in enumerate(catalog_rows(synthetic))]
    scorers = {"colour": create_embedder("colour-histogram"), "phash": create_embedder("phash")}
    both = embed_items(items, scorers, PipelineSettings(batch_size=4))
    for name, embedder in scorers.items():
        alone = embed_items(items, embedder).single()
        assert np.array_equal(both.vectors[name], alone)
    with pytest.raises(ValueError, match="2 embedders"):
        both.single()


def test_pipeline_refuses_a_wrong_shape_and_no_embedder(synthetic: Path) -> None:
    class Short(ColourHistogram):
        def embed(self, images):
            return super().embed(images)[:-1]

    items = [Item(i, row.image) for i, row in enumerate(catalog_rows(synthetic)[:3])]
    with pytest.raises(ValueError, match="returned shape"):
        embed_items(items, Short())
    with pytest.raises(ValueError, match="at least one embedder"):
        list(run_pipeline(items, {}))
    with pytest.raises(ValueError, match="batch_size"):
        PipelineSettings(batch_size=0)


# ------------------------------------------------------------------------------ the job


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


def test_bfloat16_agrees_with_float32_and_auto_picks_by_model_and_cpu(tmp_path: Path) -> None:
    from visnet.model.embedder import native_bfloat16

    checkpoint = save_checkpoint(tmp_path / "m.pt", create_model("default", seed=0))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)) for _ in range(4)]
    full = ModelEmbedder.from_checkpoint(checkpoint).embed(images)
    half = create_embedder(str(checkpoint), backend="torch-bf16")
    assert isinstance(half, ModelEmbedder) and half.precision == "bfloat16"
    cosine = (full * half.embed(images)).sum(axis=1)
    assert cosine.min() > 0.99
    # the scratch preset has only dense convolutions: bfloat16 where the CPU has it natively,
    # else ONNX
    auto = create_embedder(str(checkpoint), backend="auto")
    assert isinstance(auto, ModelEmbedder) == native_bfloat16()
    assert auto.fingerprint == half.fingerprint
    with pytest.raises(ValueError, match="precision"):
        ModelEmbedder(create_model("default", seed=0), precision="float16")  # type: ignore[arg-type]


def test_auto_keeps_depthwise_networks_on_onnxruntime(tmp_path: Path) -> None:
    from visnet.model.visnet import pretrained_config

    model = create_model(pretrained_config("efficientnet_lite0", input_size=64), seed=0)
    checkpoint = save_checkpoint(tmp_path / "lite.pt", model)
    assert isinstance(create_embedder(str(checkpoint), backend="auto"), OnnxEmbedder)


def test_a_checkpoints_onnx_export_is_made_once_and_reused(tmp_path: Path) -> None:
    from visnet.embed.registry import onnx_cache_dir

    checkpoint = save_checkpoint(tmp_path / "m.pt", create_model("default", seed=2))
    first = create_embedder(str(checkpoint), backend="onnx")
    assert isinstance(first, OnnxEmbedder)
    exports = list(onnx_cache_dir().glob(f"{first.fingerprint}-*.onnx"))
    assert len(exports) == 1 and exports[0].is_relative_to(os.environ["VISNET_CACHE"])
    made = exports[0].stat().st_mtime_ns
    again = create_embedder(str(checkpoint), backend="onnx")
    assert again.fingerprint == first.fingerprint and exports[0].stat().st_mtime_ns == made
