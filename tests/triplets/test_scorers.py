"""BISS scorers: rankings on drawn items, the registry, and rank fusion against naive references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from visnet.triplets.scorers import (
    fuse_ranks,
    fused_order,
    get_scorer,
    known_scorers,
    parse_weights,
    similarity_ranks,
)

RED, BLUE = (200, 30, 30), (40, 60, 200)


def _boot(colour: tuple[int, int, int], side: int = 96) -> Image.Image:
    """A striped L-shape on white: a shape and a pattern to match on."""
    image = Image.new("RGB", (side, side + 24), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    s = side / 160
    outline = [(20, 20), (70, 20), (70, 130), (140, 130), (140, 180), (20, 180)]
    draw.polygon([(x * s, y * s) for x, y in outline], fill=colour)
    dark = tuple(v // 3 for v in colour)
    for y in range(int(24 * s), int(180 * s), 7):
        draw.line([(20 * s, y), (140 * s, y)], fill=dark, width=2)
    return image


def _disc(colour: tuple[int, int, int], side: int = 96) -> Image.Image:
    """A plain disc: another shape, no pattern."""
    image = Image.new("RGB", (side, side + 24), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((10, 20, side - 10, side + 4), fill=colour)
    return image


def _hue_shift(image: Image.Image, shift: float) -> Image.Image:
    """The same picture with every hue turned by `shift` of a full turn (white stays white)."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(shift * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


GALLERY = {
    "copy": _boot(RED),
    "recolour": _hue_shift(_boot(RED), 0.5),  # red -> cyan: same shape and stripes
    "mild-recolour": _hue_shift(_boot(RED), 0.1),  # red -> orange
    "same-colour-disc": _disc(RED),
    "unrelated": _disc(BLUE),  # other shape, other colour, no stripes
}


def _similarities(spec: str) -> dict[str, float]:
    scorer = get_scorer(spec)
    vectors = scorer.embed([_boot(RED), *GALLERY.values()])
    assert vectors.dtype == np.float32 and vectors.shape == (len(GALLERY) + 1, scorer.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = dict(zip(GALLERY, (vectors[1:] @ vectors[0]).tolist(), strict=True))
    assert max(sims, key=sims.__getitem__) == "copy"  # an exact copy always ranks first
    return sims


@pytest.mark.parametrize("spec", ["texture", "phash"])
def test_shape_scorers_see_through_a_recolour(spec: str) -> None:
    sims = _similarities(spec)
    assert sims["recolour"] > sims["unrelated"]
    assert sims["recolour"] > sims["same-colour-disc"]


def test_colour_scorer_ranks_by_colour() -> None:
    # A recolour is a colour change, so the colour scorer must NOT see through it: it ranks a
    # same-colour item of another shape above the recoloured copy, and above an item that
    # differs in both colour and shape.
    sims = _similarities("colour")
    assert sims["same-colour-disc"] > sims["unrelated"]
    assert sims["same-colour-disc"] > sims["recolour"]
    assert sims["mild-recolour"] > sims["unrelated"]


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    import torchvision

    from visnet.model import create_model, save_checkpoint

    folder = tmp_path_factory.mktemp("deep")
    backbone = folder / "mobilenet_v3_small.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), backbone)
    checkpoint = save_checkpoint(folder / "visnet.pt", create_model("default", seed=1))
    return {"backbone": backbone, "checkpoint": Path(checkpoint)}


@pytest.mark.parametrize("form", ["default", "untrained", "checkpoint", "backbone"])
def test_deep_scorer_forms(form: str, weights_files: dict[str, Path]) -> None:
    # Only the default (Lite0's packaged ImageNet weights) is trained; the others have random
    # weights: nothing makes a random network blind to hue, and a half-turn recolour may rank
    # below an unrelated item. What holds for any weights is continuity: an exact copy is first
    # and a mild recolour (a tenth of a turn) stays above an unrelated item.
    spec = {
        "default": "deep",
        "untrained": "deep:untrained",
        "checkpoint": f"deep:{weights_files['checkpoint']}",
        "backbone": f"deep:mobilenet_v3_small:{weights_files['backbone']}",
    }[form]
    sims = _similarities(spec)
    assert sims["mild-recolour"] > sims["unrelated"]


def test_default_deep_scorer_is_the_pretrained_network() -> None:
    assert get_scorer("deep").name == "efficientnet_lite0-frozen"


def test_backbone_features_match_torchvision(weights_files: dict[str, Path]) -> None:
    """The backbone scorer equals torchvision's own trunk + average pool, normalised."""
    import torch
    import torchvision

    from visnet.model.preprocess import Preprocess

    scorer = get_scorer(f"deep:mobilenet_v3_small:{weights_files['backbone']}")
    images = [_boot(RED), _disc(BLUE)]
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    reference.load_state_dict(torch.load(weights_files["backbone"], weights_only=True))
    reference.eval()
    batch = torch.stack([Preprocess(224, 256).eval_transform()(im) for im in images])
    with torch.inference_mode():
        expected = reference.avgpool(reference.features(batch)).flatten(1).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(scorer.embed(images), expected, atol=1e-4)


def test_registry_errors(tmp_path: Path) -> None:
    assert {"colour", "texture", "deep", "phash"} <= set(known_scorers())
    with pytest.raises(ValueError, match="known scorers: colour, deep, phash, texture"):
        get_scorer("sift")
    with pytest.raises(ValueError, match="takes no argument"):
        get_scorer("colour:big")
    with pytest.raises(FileNotFoundError):
        get_scorer(f"deep:{tmp_path / 'missing.pt'}")
    with pytest.raises(FileNotFoundError):
        get_scorer(f"deep:resnet18:{tmp_path / 'missing.pth'}")


def test_parse_weights() -> None:
    assert parse_weights("colour=1, texture=0.5,deep:m/x.pt=2,phash") == {
        "colour": 1.0,
        "texture": 0.5,
        "deep:m/x.pt": 2.0,
        "phash": 1.0,
    }
    for bad, message in [
        ("colour=-1", ">= 0"),
        ("colour=x", "must be a number"),
        ("colour=0", "positive weight"),
        ("hog=1", "unknown scorer 'hog'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_weights(bad)


# ---------------------------------------------------------------------------------------- fusion


def _naive_ranks(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Rank = how many items are strictly more similar (ties share the better rank)."""
    out = np.zeros((len(queries), len(items)), dtype=np.int64)
    for i, q in enumerate(queries):
        sims = [float(np.dot(q, item)) for item in items]
        for j, s in enumerate(sims):
            out[i, j] = sum(other > s for other in sims)
    return out


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_similarity_ranks_match_naive_loop() -> None:
    rng = np.random.default_rng(0)
    items = _unit(rng, 40, 8)
    items[7] = items[3]  # a tie
    ranks = similarity_ranks(items[:6], items)
    assert np.array_equal(ranks, _naive_ranks(items[:6], items))
    assert ranks[3, 3] == ranks[3, 7] == 0


@pytest.mark.parametrize("method", ["mean-rank", "rrf"])
def test_fusion_respects_weights(method: str) -> None:
    rng = np.random.default_rng(1)
    a, b = _unit(rng, 50, 6), _unit(rng, 50, 6)
    rows = np.arange(10)
    alone_a = fused_order({"a": a}, {"a": 1.0}, rows, method)
    alone_b = fused_order({"b": b}, {"b": 1.0}, rows, method)
    assert np.array_equal(fused_order({"a": a, "b": b}, {"a": 1.0, "b": 0.0}, rows), alone_a)
    assert np.array_equal(fused_order({"a": a, "b": b}, {"a": 0.0, "b": 2.0}, rows), alone_b)
    # weights shift the fused order towards the heavier scorer
    heavy_a = fused_order({"a": a, "b": b}, {"a": 10.0, "b": 1.0}, rows, method)
    heavy_b = fused_order({"a": a, "b": b}, {"a": 1.0, "b": 10.0}, rows, method)
    top = 10
    overlap = [len(set(x[:top]) & set(y[:top])) for x, y in zip(heavy_a, alone_a, strict=True)]
    other = [len(set(x[:top]) & set(y[:top])) for x, y in zip(heavy_b, alone_a, strict=True)]
    assert sum(overlap) > sum(other)


def test_fuse_ranks_mean_rank_by_hand() -> None:
    ranks = {"a": np.array([[0, 1, 2]]), "b": np.array([[2, 0, 1]])}
    cost = fuse_ranks(ranks, {"a": 1.0, "b": 3.0})
    assert np.allclose(cost, [[(0 + 6) / 4, (1 + 0) / 4, (2 + 3) / 4]])
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_ranks(ranks, {"a": 1.0}, "borda")
    with pytest.raises(ValueError, match="no ranks for weighted scorers"):
        fuse_ranks(ranks, {"c": 1.0})
