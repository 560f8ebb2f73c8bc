"""Hand-made embedders: unit norm, sensible rankings, agreement with naive references; registry."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from visnet.embed.registry import (
    checkpoint_path,
    create_embedder,
    embedder_fingerprint,
    known_embedders,
)
from visnet.features.base import Embedder
from visnet.features.colour import colour_histograms, rgb_to_hsv
from visnet.features.phash import PerceptualHash, hamming_distance

BASELINES = ("colour-histogram", "texture", "phash")
RED, GREEN, BLUE = (200, 30, 30), (30, 170, 40), (40, 60, 200)


def _boot(colour: tuple[int, int, int], side: int = 160) -> Image.Image:
    """An asymmetric striped L-shape on white: shape and pattern to match on."""
    image = Image.new("RGB", (side, side + 40), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.polygon([(20, 20), (70, 20), (70, 130), (140, 130), (140, 180), (20, 180)], fill=colour)
    dark = tuple(v // 3 for v in colour)
    for y in range(24, 180, 12):
        draw.line([(20, y), (140, y)], fill=dark, width=3)
    return image


def _disc(colour: tuple[int, int, int], side: int = 160) -> Image.Image:
    """A smooth disc with a checker pattern: another shape, another texture."""
    image = Image.new("RGB", (side, side + 40), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 40, 130, 140), fill=colour)
    for x in range(40, 120, 20):
        for y in range(50, 130, 20):
            draw.rectangle((x, y, x + 9, y + 9), fill=(250, 250, 250))
    return image


def _round_trip(image: Image.Image, format: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=92)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def images() -> dict[str, Image.Image]:
    return {
        "query": _boot(RED),
        "copy": _round_trip(_boot(RED), "PNG"),
        "recoloured": _boot(GREEN),
        "unrelated": _disc(BLUE),
        "same_colour_unrelated": _disc(RED),
    }


def _scores(name: str, images: dict[str, Image.Image]) -> dict[str, float]:
    vectors = create_embedder(name).embed(list(images.values()))
    return dict(zip(images, (vectors @ vectors[0]).tolist(), strict=True))


@pytest.mark.parametrize("name", BASELINES)
def test_rows_are_unit_norm_float32(name: str, images: dict[str, Image.Image]) -> None:
    embedder = create_embedder(name)
    blank = Image.new("RGB", (50, 30), (255, 255, 255))
    vectors = embedder.embed([*images.values(), blank])
    assert isinstance(embedder, Embedder)
    assert vectors.dtype == np.float32 and vectors.shape == (len(images) + 1, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)


@pytest.mark.parametrize("name", BASELINES)
def test_exact_copy_ranks_first(name: str, images: dict[str, Image.Image]) -> None:
    scores = _scores(name, images)
    others = [v for k, v in scores.items() if k not in ("query", "copy")]
    assert scores["copy"] > max(others)


@pytest.mark.parametrize("name", ["texture", "phash"])
def test_shape_scorers_rank_a_recolour_above_an_unrelated_image(
    name: str, images: dict[str, Image.Image]
) -> None:
    scores = _scores(name, images)
    assert scores["recoloured"] > scores["unrelated"]
    assert scores["recoloured"] > scores["same_colour_unrelated"]


def test_colour_histogram_ranks_by_colour_not_shape(images: dict[str, Image.Image]) -> None:
    scores = _scores("colour-histogram", images)
    assert scores["same_colour_unrelated"] > scores["recoloured"]
    assert scores["same_colour_unrelated"] > scores["unrelated"]


@pytest.mark.parametrize("name", BASELINES)
def test_a_jpeg_copy_stays_close(name: str, images: dict[str, Image.Image]) -> None:
    embedder = create_embedder(name)
    query, jpeg = embedder.embed([images["query"], _round_trip(images["query"], "JPEG")])
    unrelated = embedder.embed([images["unrelated"], images["same_colour_unrelated"]])
    assert query @ jpeg > 0.9
    assert query @ jpeg > (unrelated @ query).max() + 0.1


def test_rgb_to_hsv_matches_colorsys() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(200, 3), dtype=np.uint8)
    reference = np.array([colorsys.rgb_to_hsv(*(c / 255.0)) for c in rgb.astype(float)])
    np.testing.assert_allclose(rgb_to_hsv(rgb), reference, atol=1e-5)


def test_colour_histogram_matches_looped_reference() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(3, 6, 6, 3), dtype=np.uint8)
    rgb[0, :3] = 255  # some background pixels that must not count
    fast = colour_histograms(rgb)
    for n in range(3):
        counts = np.zeros(fast.shape[1])
        for pixel in rgb[n].reshape(-1, 3):
            if pixel.min() >= 235:
                continue
            h, s, v = colorsys.rgb_to_hsv(*(pixel / 255.0))
            if s < 0.15 or v < 0.15:
                counts[128 + min(int(v * 4), 3)] += 1
                continue
            sv = min(int(s * 4), 3) * 4 + min(int(v * 4), 3)
            low, upper = divmod(h * 8, 1.0)  # hue bins centred on red, split between neighbours
            counts[int(low) % 8 * 16 + sv] += 1 - upper
            counts[(int(low) + 1) % 8 * 16 + sv] += upper
        expected = np.sqrt(counts / counts.sum())
        np.testing.assert_allclose(fast[n], expected, atol=1e-5)


def test_phash_inner_product_is_hamming_similarity(images: dict[str, Image.Image]) -> None:
    phash = PerceptualHash()
    batch = list(images.values())
    bits, vectors = phash.bits(batch), phash.embed(batch)
    hamming = hamming_distance(bits, bits)
    np.testing.assert_allclose(vectors @ vectors.T, 1 - 2 * hamming / 64, atol=1e-6)


def test_embedding_is_deterministic(images: dict[str, Image.Image]) -> None:
    for name in BASELINES:
        first = create_embedder(name).embed([images["query"]])
        np.testing.assert_array_equal(first, create_embedder(name).embed([images["query"]]))


# ------------------------------------------------------------------------------------- registry


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="colour-histogram.*phash.*texture.*untrained"):
        create_embedder("sift")
    assert set(BASELINES) | {"untrained"} <= set(known_embedders())


def test_checkpoint_names(tmp_path) -> None:
    assert checkpoint_path("checkpoint:runs/a.pt") is not None
    assert checkpoint_path("models/b.pt") is not None
    assert checkpoint_path("texture") is None
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_embedder(f"checkpoint:{tmp_path / 'missing.pt'}")


def test_fingerprint_tracks_settings() -> None:
    small, big = create_embedder("colour-histogram"), create_embedder("colour-histogram", size=96)
    assert embedder_fingerprint(small) != embedder_fingerprint(big)
    assert embedder_fingerprint(small) == embedder_fingerprint(create_embedder("colour-histogram"))


def test_untrained_network_is_registered(images: dict[str, Image.Image]) -> None:
    pytest.importorskip("visnet.model.embedder")
    embedder = create_embedder("untrained")
    vectors = embedder.embed([images["query"], images["copy"]])
    assert vectors.shape == (2, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
