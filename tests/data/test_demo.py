"""The demo builder on a small slice of the real installed images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from visnet.data import compose
from visnet.data.catalog import read_catalog
from visnet.data.demo import DemoSettings, build_demo
from visnet.data.sources import categorise, missing_packages, words_of
from visnet.data.street2shop import read_set

pytestmark = pytest.mark.skipif(
    bool(missing_packages()), reason=f"Debian packages missing: {missing_packages()}"
)
SETTINGS = DemoSettings(seed=3, limit=40, workers=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "set"
    build_demo(out, SETTINGS)
    return out


def test_summary_has_the_documented_keys(demo: Path) -> None:
    summary = json.loads((demo / "summary.json").read_text())
    for key in (
        "products",
        "categories",
        "catalog_images",
        "street_photos",
        "train_pairs",
        "test_pairs",
    ):
        assert key in summary
    assert summary["catalog_images"] >= 2 * summary["products"]
    assert summary["street_photos"] == 3 * summary["products"]
    assert not (demo.parent / "set.partial").exists()
    for extra in ("catalog.jsonl", "contact_sheet.png", "LICENSES.md"):
        assert (demo / extra).is_file()


def test_split_is_by_product_and_by_shape(demo: Path) -> None:
    data = read_set(demo)
    train = {p.product for p in data.pairs["train"]}
    test = {p.product for p in data.pairs["test"]}
    assert train and test and not train & test
    items = read_catalog(demo / "catalog.jsonl")
    base_split: dict[object, set[str]] = {}
    for item in items:
        base_split.setdefault(item.attributes["variant_of"], set()).add(item.attributes["split"])
    assert all(len(splits) == 1 for splits in base_split.values())


def test_boxes_lie_inside_their_photos(demo: Path) -> None:
    data = read_set(demo)  # read_set itself refuses a box outside its photo
    pair = data.pairs["train"][0]
    with Image.open(data.photo_path(pair.photo)) as image:
        assert pair.bbox.left + pair.bbox.width <= image.width
        assert pair.bbox.width >= 8 and pair.bbox.height >= 8


def test_other_products_in_street_photos_are_recorded(demo: Path) -> None:
    data = read_set(demo)
    assert data.objects, "clutter is pasted into most photos; its boxes must be recorded"
    street = {p.photo for split in data.pairs.values() for p in split}
    products = data.products()
    for item in data.objects:
        assert item.photo in street and 0 < item.visible <= 1
        if item.product is not None:
            assert products[item.product] == item.category
        with Image.open(data.photo_path(item.photo)) as image:
            assert item.bbox.left + item.bbox.width <= image.width
            assert item.bbox.top + item.bbox.height <= image.height


def test_same_seed_same_metadata(demo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_demo(again, SETTINGS)
    for name in ("photos.txt", "catalog.jsonl"):
        left = (demo / name).read_text().replace(str(demo.resolve()), "")
        right = (again / name).read_text().replace(str(again.resolve()), "")
        assert left == right
    for path in sorted((demo / "meta" / "json").iterdir()):
        assert path.read_text() == (again / "meta" / "json" / path.name).read_text()


def test_categorise_by_keyword_then_folder() -> None:
    assert categorise("unsorted", words_of("red_fedora_hat_01")) == "hats"
    assert categorise("people/clothing", words_of("tennis_shoe_jarno")) == "shoes"
    assert categorise("computer/hardware", words_of("laptop_01")) == "electronics"
    assert categorise("shapes/stars", words_of("star_ring")) is None
    assert categorise("animals/birds", words_of("parrot")) is None


def test_cutout_rejects_small_and_blank_images() -> None:
    small = Image.new("RGBA", (60, 60), (255, 0, 0, 255))
    with pytest.raises(compose.RejectedImage, match="small"):
        compose.make_cutout(small)
    blank = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    with pytest.raises(compose.RejectedImage, match="blank"):
        compose.make_cutout(blank)
    canvas = Image.new("RGBA", (300, 300), (200, 200, 200, 255))
    with pytest.raises(compose.RejectedImage, match="blank"):
        compose.make_cutout(canvas)


def test_layers_box_what_stays_visible() -> None:
    layers = compose._Layers(100, 80)
    square = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    under = layers.add(square, 10, 10)  # covers x 10..49, y 10..49
    over = layers.add(square, 30, 10)  # hides x 30..49 of the first
    edge = layers.add(square, 80, 60)  # only 20x20 of it inside the frame
    assert layers.visible(under) == ((10, 10, 20, 40), pytest.approx(0.5))
    assert layers.visible(over) == ((30, 10, 40, 40), pytest.approx(1.0))
    assert layers.visible(edge) == ((80, 60, 20, 20), pytest.approx(0.25))
    hidden = layers.add(Image.new("RGBA", (5, 5), (0, 0, 0, 255)), 200, 200)
    assert layers.visible(hidden) == ((0, 0, 0, 0), 0.0)


def test_cutout_crops_to_content_and_hue_shift_changes_colour() -> None:
    image = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    image.paste((220, 30, 30, 255), (100, 150, 300, 250))
    image.paste((30, 30, 220, 255), (100, 150, 140, 250))
    cut = compose.make_cutout(image)
    assert cut.rgba.size == (200, 100)
    shifted = compose.hue_shift(cut.rgba, 1 / 3).convert("RGB").getpixel((150, 50))
    assert shifted[1] > shifted[0]  # red turned towards green
