"""The tiny synthetic set: valid Street2Shop layout, clean splits, reproducible, boxes in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visnet.data.catalog import missing_images, read_catalog
from visnet.data.street2shop import check_images, read_set
from visnet.data.synthetic import make_synthetic_set

SUMMARY_KEYS = {
    "products",
    "categories",
    "catalog_images",
    "street_photos",
    "train_pairs",
    "test_pairs",
}


def metadata(root: Path) -> dict[str, bytes]:
    """Every file except the images, by relative path."""
    files = (p for p in root.rglob("*") if p.is_file() and p.parent.name != "photos")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, make_synthetic_set(root, seed=3)


def test_reads_back_with_read_set(built: tuple[Path, dict]) -> None:
    root, summary = built
    data = read_set(root)
    assert data.categories == summary["categories"] == ["circle", "square", "triangle"]
    assert len(data.products()) == summary["products"] == 12
    assert len(data.shop) == summary["catalog_images"] == 12 * 2
    assert len(data.pairs["train"]) == summary["train_pairs"] > 0
    assert len(data.pairs["test"]) == summary["test_pairs"] > 0
    assert summary["train_pairs"] + summary["test_pairs"] == summary["street_photos"] == 24
    assert check_images(data).missing == []
    assert all(data.photo_path(s.photo).suffix == ".jpg" for s in data.shop)  # type: ignore[union-attr]


def test_summary_keys_and_file(built: tuple[Path, dict]) -> None:
    root, summary = built
    assert set(summary) >= SUMMARY_KEYS
    assert json.loads((root / "summary.json").read_text()) == summary


def test_no_product_in_both_splits(built: tuple[Path, dict]) -> None:
    data = read_set(built[0])
    train = {p.product for p in data.pairs["train"]}
    test = {p.product for p in data.pairs["test"]}
    assert train and test and not train & test
    for category in data.categories:  # every category can be evaluated
        assert any(p.category == category for p in data.pairs["test"])


def test_boxes_inside_images(built: tuple[Path, dict]) -> None:
    data = read_set(built[0])
    for pair in data.pairs["train"] + data.pairs["test"]:
        with Image.open(data.photo_path(pair.photo)) as image:  # type: ignore[arg-type]
            width, height = image.size
            assert image.format == "JPEG"
        left, top, right, bottom = pair.bbox.as_xyxy()
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert pair.bbox.width >= 8 and pair.bbox.height >= 8


def test_box_holds_the_product(built: tuple[Path, dict]) -> None:
    """Inside the box the product's colour dominates; the box is not an arbitrary rectangle."""
    root = built[0]
    data = read_set(root)
    shop_photo = {s.product: s.photo for s in data.shop}
    for pair in data.pairs["test"]:
        street = np.asarray(Image.open(root / "photos" / f"{pair.photo}.jpg"), dtype=np.float64)
        left, top, right, bottom = (int(v) for v in pair.bbox.as_xyxy())
        centre = street[(top + bottom) // 2 - 2 : (top + bottom) // 2 + 2, (left + right) // 2]
        shop = np.asarray(Image.open(root / "photos" / f"{shop_photo[pair.product]}.jpg"))
        product_colour = shop[shop.shape[0] // 2, shop.shape[1] // 2].astype(float)
        assert np.abs(centre.mean(axis=0) - product_colour).max() < 60


def test_catalog_jsonl(built: tuple[Path, dict]) -> None:
    root, summary = built
    items = read_catalog(root / "catalog.jsonl")
    assert len(items) == summary["products"]
    assert missing_images(items) == []
    data = read_set(root)
    first_view: dict[int, int] = {}
    for shop in data.shop:
        first_view.setdefault(shop.product, shop.photo)
    for item in items:
        assert item.image == (root / "photos" / f"{first_view[int(item.id)]}.jpg").resolve()
        assert item.category == data.products()[int(item.id)]


def test_same_seed_same_metadata(tmp_path: Path, built: tuple[Path, dict]) -> None:
    make_synthetic_set(tmp_path / "again", seed=3)
    assert metadata(tmp_path / "again") == metadata(built[0])
    make_synthetic_set(tmp_path / "other", seed=4)
    assert metadata(tmp_path / "other") != metadata(built[0])


def test_distinct_colours(built: tuple[Path, dict]) -> None:
    colours = [item.attributes["colour"] for item in read_catalog(built[0] / "catalog.jsonl")]
    assert len(set(colours)) == len(colours)


def test_other_sizes(tmp_path: Path) -> None:
    summary = make_synthetic_set(
        tmp_path, seed=1, categories=5, products_per_category=2, views=1, street_per_product=1
    )
    assert summary["products"] == 10 and summary["catalog_images"] == 10
    assert len(summary["categories"]) == 5
    assert summary["test_pairs"] == 5 and summary["train_pairs"] == 5
    read_set(tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="products_per_category"):
        make_synthetic_set(tmp_path, products_per_category=1)
    with pytest.raises(ValueError, match="size"):
        make_synthetic_set(tmp_path, size=4)
