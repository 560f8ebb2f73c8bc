"""Street2Shop-layout reading and writing: round trip, and malformed files named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from visnet.data.street2shop import (
    Box,
    DataFormatError,
    ShopImage,
    Street2ShopSet,
    StreetObject,
    StreetPair,
    check_images,
    photo_path,
    read_set,
    write_set,
)


def small_set(root: Path) -> Street2ShopSet:
    shop = [
        ShopImage(photo=1, product=10, category="dresses"),
        ShopImage(photo=2, product=10, category="dresses"),
        ShopImage(photo=3, product=11, category="dresses"),
        ShopImage(photo=4, product=20, category="hats"),
    ]
    pairs = {
        "train": [StreetPair(photo=100, product=10, category="dresses", bbox=Box(1, 2, 30, 40))],
        "test": [
            StreetPair(photo=101, product=11, category="dresses", bbox=Box(0, 0, 5.5, 6.25)),
            StreetPair(photo=102, product=20, category="hats", bbox=Box(3, 4, 10, 10)),
        ],
    }
    urls = {1: "http://x/1.jpg", 2: "http://x/2.jpg", 100: "http://x/100.jpg"}
    return Street2ShopSet(root=root, shop=shop, pairs=pairs, urls=urls)


BOX = {"left": 0, "top": 0, "width": 4, "height": 4}


def meta(root: Path) -> Path:
    return root / "meta" / "json"


def write_minimal(root: Path, pairs: object, shop: object = None) -> Path:
    """A set with one catalog file and one test-pairs file holding `pairs` (any JSON value)."""
    meta(root).mkdir(parents=True)
    shop = shop if shop is not None else [{"photo": 1, "product": 10}]
    (meta(root) / "retrieval_hats.json").write_text(json.dumps(shop))
    path = meta(root) / "test_pairs_hats.json"
    path.write_text(json.dumps(pairs, indent=1))
    return path


def test_round_trip(tmp_path: Path) -> None:
    original = small_set(tmp_path)
    write_set(original)
    loaded = read_set(tmp_path)
    assert loaded.root == original.root
    assert sorted(loaded.shop, key=lambda s: s.photo) == original.shop
    for split in ("train", "test"):
        key = lambda p: p.photo  # noqa: E731
        assert sorted(loaded.pairs[split], key=key) == sorted(original.pairs[split], key=key)
    assert loaded.urls == original.urls
    assert loaded.categories == ["dresses", "hats"]
    assert loaded.products() == {10: "dresses", 11: "dresses", 20: "hats"}


def test_write_to_other_root(tmp_path: Path) -> None:
    original = small_set(tmp_path / "a")
    write_set(original, tmp_path / "b")
    assert len(read_set(tmp_path / "b").shop) == 4


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_minimal(tmp_path, [])
    path.write_text('[\n{"photo": 5, "product": 10,\n "bbox": }\n]\n')
    with pytest.raises(DataFormatError) as info:
        read_set(tmp_path)
    assert info.value.path == path
    assert "test_pairs_hats.json" in str(info.value)
    assert "line 3" in str(info.value)


def test_top_level_must_be_a_list(tmp_path: Path) -> None:
    write_minimal(tmp_path, {"photo": 5, "product": 10})
    with pytest.raises(DataFormatError, match="test_pairs_hats.json.*expected a JSON list"):
        read_set(tmp_path)


def test_missing_field(tmp_path: Path) -> None:
    write_minimal(tmp_path, [{"photo": 5, "bbox": {"left": 0, "top": 0, "width": 1, "height": 1}}])
    with pytest.raises(DataFormatError, match="item 0.*missing field 'product'"):
        read_set(tmp_path)


def test_missing_bbox_and_bad_number(tmp_path: Path) -> None:
    write_minimal(tmp_path, [{"photo": 5, "product": 10}])
    with pytest.raises(DataFormatError, match="bbox"):
        read_set(tmp_path)
    bad = [{"photo": 5, "product": 10, "bbox": {"left": "0", "top": 0, "width": 1, "height": 1}}]
    (meta(tmp_path) / "test_pairs_hats.json").write_text(json.dumps(bad))
    with pytest.raises(DataFormatError, match="bbox.left"):
        read_set(tmp_path)


def test_non_integer_id(tmp_path: Path) -> None:
    write_minimal(tmp_path, [], shop=[{"photo": "abc", "product": 10}])
    with pytest.raises(DataFormatError, match="retrieval_hats.json.*'photo'"):
        read_set(tmp_path)


def test_unknown_product(tmp_path: Path) -> None:
    box = {"left": 0, "top": 0, "width": 1, "height": 1}
    write_minimal(
        tmp_path,
        [{"photo": 5, "product": 10, "bbox": box}, {"photo": 6, "product": 99, "bbox": box}],
    )
    with pytest.raises(DataFormatError, match="item 1.*product 99"):
        read_set(tmp_path)


def test_box_outside_its_image(tmp_path: Path) -> None:
    box = {"left": 20, "top": 20, "width": 30, "height": 30}  # reaches 50, 50
    write_minimal(tmp_path, [{"photo": 5, "product": 10, "bbox": box}])
    read_set(tmp_path)  # no image yet: the box cannot be checked, and that is not an error
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "photos" / "5.jpg")
    with pytest.raises(DataFormatError, match="outside photo 5"):
        read_set(tmp_path)
    assert len(read_set(tmp_path, check_boxes=False).pairs["test"]) == 1


def test_empty_or_negative_box(tmp_path: Path) -> None:
    write_minimal(
        tmp_path,
        [{"photo": 5, "product": 10, "bbox": {"left": 0, "top": 0, "width": 0, "height": 4}}],
    )
    with pytest.raises(DataFormatError, match="empty or negative"):
        read_set(tmp_path)


def test_not_a_set(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="meta/json"):
        read_set(tmp_path)


def test_bad_photos_txt(tmp_path: Path) -> None:
    write_minimal(tmp_path, [])
    (tmp_path / "photos.txt").write_text("1,http://x/1.jpg\nnot a line\n")
    with pytest.raises(DataFormatError, match="photos.txt: line 2"):
        read_set(tmp_path)


def test_missing_images_are_counted_not_raised(tmp_path: Path) -> None:
    data = small_set(tmp_path)
    write_set(data)
    (tmp_path / "photos").mkdir()
    for photo in (1, 3, 100):
        Image.new("RGB", (64, 64)).save(tmp_path / "photos" / f"{photo}.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "photos" / "4.png")
    loaded = read_set(tmp_path)
    report = check_images(loaded)
    assert report.missing == [2, 101, 102]
    assert report.skipped == 3
    assert report.shop_images == 4
    assert report.street_photos == 3
    assert photo_path(tmp_path, 4) == tmp_path / "photos" / "4.png"
    assert loaded.photo_path(2) is None


def test_street_objects_round_trip_and_are_optional(tmp_path: Path) -> None:
    original = small_set(tmp_path)
    write_set(original)
    assert not (meta(tmp_path) / "street_objects.json").exists()  # optional, not written empty
    assert read_set(tmp_path).objects == []
    original.objects = [
        StreetObject(101, 20, "hats", Box(1, 1, 3, 3), 0.75),
        StreetObject(101, None, "bags", Box(0, 0, 2, 2), 0.4),
    ]
    write_set(original)
    loaded = read_set(tmp_path)
    assert loaded.objects == original.objects
    assert [o.product for o in loaded.objects_by_photo(0.5)[101]] == [20]


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"photo": 5, "product": 99, "category": "hats", "bbox": BOX}, "product 99"),
        ({"photo": 5, "category": "", "bbox": BOX}, "'category'"),
        ({"photo": 5, "category": "hats", "bbox": BOX, "visible": 1.5}, "'visible'"),
        ({"photo": 5, "category": "hats"}, "bbox"),
    ],
)
def test_malformed_street_objects_are_named(tmp_path: Path, item: dict, problem: str) -> None:
    write_minimal(tmp_path, [])
    (meta(tmp_path) / "street_objects.json").write_text(json.dumps([item]))
    with pytest.raises(DataFormatError, match=f"street_objects.json: item 0: .*{problem}"):
        read_set(tmp_path)
