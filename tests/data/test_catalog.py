"""Catalog import from CSV, JSONL and folders; unsafe paths and malformed rows are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from visnet.data.catalog import (
    CatalogError,
    CatalogItem,
    missing_images,
    read_catalog,
    read_side_info,
    side_attribute,
    write_catalog_jsonl,
)


def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def row(id: object = "a1", image: str = "img/a.jpg", **extra: object) -> dict:
    return {"id": id, "category": "hats", "image": image, "title": "Red hat", **extra}


# -------------------------------------------------------------------------------------- formats


def test_csv_import(tmp_path: Path) -> None:
    touch_image(tmp_path / "img" / "a.jpg")
    path = tmp_path / "catalog.csv"
    path.write_text(
        "id, category ,image,title,colour,price\n"
        "a1,hats,img/a.jpg,Red hat,red,9.99\n"
        "\n"
        'b2,shoes,img/b.jpg,"Boots, brown",brown,\n'
    )
    items = read_catalog(path)
    assert [i.id for i in items] == ["a1", "b2"]
    first = items[0]
    assert first.category == "hats"
    assert first.image == (tmp_path / "img" / "a.jpg").resolve()
    assert first.image.is_absolute()
    assert first.title == "Red hat"
    assert first.attributes == {"colour": "red", "price": "9.99"}
    assert items[1].title == "Boots, brown"
    assert missing_images(items) == [items[1]]


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes("id,category,image,title\nx,hats,x.jpg,X\n".encode("utf-8-sig"))
    assert read_catalog(path)[0].id == "x"


def test_jsonl_import(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "catalog.jsonl",
        [
            row("a1", colour="red"),
            row(7, "b.jpg", attributes={"size": "M", "colour": "blue"}, brand="Acme"),
        ],
    )
    with path.open("a") as f:
        f.write("\n")  # blank lines are allowed
    items = read_catalog(path)
    assert [i.id for i in items] == ["a1", "7"]
    assert items[0].attributes == {"colour": "red"}
    assert items[1].attributes == {"size": "M", "colour": "blue", "brand": "Acme"}
    assert items[1].image == (tmp_path / "b.jpg").resolve()


def test_folder_import(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    touch_image(root / "hats" / "red_wool-hat.jpg")
    touch_image(root / "hats" / "blue cap.PNG")
    touch_image(root / "shoes" / "boot.jpeg")
    (root / "shoes" / "README.txt").write_text("not an image")
    (root / "shoes" / ".hidden.jpg").write_text("")
    touch_image(root / "loose.jpg")  # not in a category folder: ignored
    items = read_catalog(root)
    assert [(i.id, i.category, i.title) for i in items] == [
        ("hats.blue-cap", "hats", "blue cap"),
        ("hats.red_wool-hat", "hats", "red wool hat"),
        ("shoes.boot", "shoes", "boot"),
    ]
    assert items[0].image == (root / "hats" / "blue cap.PNG").resolve()
    assert all(i.attributes == {} for i in items)
    assert missing_images(items) == []


def test_folder_same_stem_twice_is_a_duplicate(tmp_path: Path) -> None:
    touch_image(tmp_path / "hats" / "cap.jpg")
    touch_image(tmp_path / "hats" / "cap.png")
    with pytest.raises(CatalogError, match="duplicate id 'hats.cap'"):
        read_catalog(tmp_path)


def test_round_trip(tmp_path: Path) -> None:
    touch_image(tmp_path / "photos" / "1.jpg")
    items = [
        CatalogItem("1", "hats", (tmp_path / "photos" / "1.jpg").resolve(), "Hat", {"c": "red"}),
        CatalogItem("2", "shoes", (tmp_path / "photos" / "sub" / "2.jpg").resolve(), "Shoe", {}),
    ]
    path = write_catalog_jsonl(items, tmp_path / "catalog.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["image"] for line in lines] == ["photos/1.jpg", "photos/sub/2.jpg"]
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert read_catalog(path) == items


def test_write_refuses_image_outside_folder(tmp_path: Path) -> None:
    outside = CatalogItem("1", "hats", tmp_path / "elsewhere.jpg", "Hat", {})
    with pytest.raises(CatalogError, match="outside"):
        write_catalog_jsonl([outside], tmp_path / "sub" / "catalog.jsonl")


# -------------------------------------------------------------------------------- unsafe paths


@pytest.mark.parametrize("image", ["../secret.jpg", "img/../../secret.jpg", "/etc/passwd"])
def test_path_escaping_root_is_refused(tmp_path: Path, image: str) -> None:
    root = tmp_path / "catalog"
    root.mkdir()
    path = write_jsonl(root / "catalog.jsonl", [row("a1"), row("a2", image)])
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    message = str(info.value)
    assert "catalog.jsonl" in message and "line 2" in message and image in message
    assert info.value.line == 2


def test_csv_path_escaping_root_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("id,category,image,title\na,hats,../x.jpg,A\n")
    with pytest.raises(CatalogError, match=r"catalog.csv: line 2: .*'\.\./x\.jpg'.*outside"):
        read_catalog(path)


def test_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    secret = touch_image(tmp_path / "private" / "secret.jpg")
    root = tmp_path / "catalog"
    (root / "img").mkdir(parents=True)
    (root / "img" / "innocent.jpg").symlink_to(secret)
    path = write_jsonl(root / "catalog.jsonl", [row("a1", "img/innocent.jpg")])
    with pytest.raises(CatalogError, match="line 1.*innocent.jpg.*outside"):
        read_catalog(path)


def test_symlinked_folder_escaping_root_is_refused(tmp_path: Path) -> None:
    touch_image(tmp_path / "private" / "secret.jpg")
    root = tmp_path / "shop"
    touch_image(root / "hats" / "cap.jpg")
    (root / "loot").symlink_to(tmp_path / "private")
    with pytest.raises(CatalogError, match="outside"):
        read_catalog(root)


def test_symlink_loop_and_nul_byte_are_catalog_errors(tmp_path: Path) -> None:
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    for image in ("loop.jpg", "bad\x00name.jpg"):
        path = write_jsonl(tmp_path / "c.jsonl", [row("a1", image)])
        with pytest.raises(CatalogError, match="line 1: .*cannot be resolved"):
            read_catalog(path)


def test_symlink_inside_root_is_fine(tmp_path: Path) -> None:
    real = touch_image(tmp_path / "img" / "real.jpg")
    (tmp_path / "img" / "alias.jpg").symlink_to(real)
    path = write_jsonl(tmp_path / "catalog.jsonl", [row("a1", "img/alias.jpg")])
    assert read_catalog(path)[0].image == real.resolve()


# ---------------------------------------------------------------------------------- validation


def test_duplicate_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [row("a1"), row("b"), row("a1")])
    with pytest.raises(
        CatalogError, match=r"c.jsonl: line 3: duplicate id 'a1' \(first on line 1\)"
    ):
        read_catalog(path)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("id,category,image,title\nx,h,x.jpg,X\nx,h,y.jpg,Y\n")
    with pytest.raises(CatalogError, match="c.csv: line 3: duplicate id 'x'"):
        read_catalog(csv_path)


def test_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,image,title\na,a.jpg,A\n")
    with pytest.raises(CatalogError, match=r"c.csv: line 1: missing column.*'category'"):
        read_catalog(path)


def test_missing_key(tmp_path: Path) -> None:
    bad = row("b")
    del bad["image"]
    path = write_jsonl(tmp_path / "c.jsonl", [row("a"), bad])
    with pytest.raises(CatalogError, match="c.jsonl: line 2: missing key 'image'"):
        read_catalog(path)


def test_empty_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [row("  ")])
    with pytest.raises(CatalogError, match="line 1: empty 'id'"):
        read_catalog(path)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("id,category,image,title\n,h,x.jpg,X\n")
    with pytest.raises(CatalogError, match="line 2: empty 'id'"):
        read_catalog(csv_path)


def test_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(row("a")) + '\n{"id": "b", \n')
    with pytest.raises(CatalogError, match="c.jsonl: line 2: bad JSON"):
        read_catalog(path)
    path.write_text('["a", "hats"]\n')
    with pytest.raises(CatalogError, match="line 1: expected a JSON object"):
        read_catalog(path)


def test_bad_attributes_and_types(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [row("a", attributes=[1, 2])])
    with pytest.raises(CatalogError, match="'attributes' must be an object"):
        read_catalog(path)
    path = write_jsonl(tmp_path / "c.jsonl", [{**row("a"), "category": 3}])
    with pytest.raises(CatalogError, match="'category' must be a string"):
        read_catalog(path)


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,category,image,title\na,h,a.jpg,A,extra\n")
    with pytest.raises(CatalogError, match="line 2: expected 4 fields"):
        read_catalog(path)
    path.write_text("id,category,image,title\na,h,a.jpg\n")
    with pytest.raises(CatalogError, match="line 2: expected 4 fields"):
        read_catalog(path)


def test_unknown_type_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(CatalogError, match="unknown catalog type"):
        read_catalog(tmp_path / "c.xml")
    with pytest.raises(CatalogError, match="no such file"):
        read_catalog(tmp_path / "absent.csv")


def test_side_info_reads_attributes_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        '{"id": "7", "attributes": {"kind": "photo"}}\n\n{"id": "x", "title": "T"}\n',
        encoding="utf-8",
    )
    info = read_side_info(tmp_path)  # the folder holding catalog.jsonl
    assert set(info) == {"7", "x"} and info["x"]["title"] == "T"
    assert side_attribute(info, "kind") == {7: "photo"}
    assert read_side_info(tmp_path / "absent") == {}
    path.write_text('{"id": "1"}\n{"title": "no id"}\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="line 2: missing id"):
        read_side_info(path)
    path.write_text('{"id": "1", "attributes": [1]}\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="line 1: 'attributes' must be an object"):
        read_side_info(path)
