"""Plain catalog import: a CSV file, a JSONL file or a folder of category folders -> CatalogItems.

    CSV    header `id,category,image,title[,more...]`; extra columns become attributes
    JSONL  one object a line with the same keys; extra keys and an "attributes" object -> attributes
    folder ROOT/<category>/<name>.<ext>; id = "<category>.<name>" (slugged); title = name
           (_ and - as spaces)

Three attributes are what a shop filters on, checked and also kept as typed fields (an empty
value: not known): `price` (a number >= 0, such as 12.5), `brand` (text) and `in_stock`
(true/false, yes/no or 1/0).

Image paths in a file are relative to the file's folder, the catalog root; a path that resolves
(after symlinks) outside that root is refused. Missing image files are not an import error:
`missing_images` lists them so the caller can skip and report them.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visnet.io import JsonLinesError, read_jsonl, write_jsonl_atomic

log = logging.getLogger(__name__)

__all__ = [
    "CatalogError",
    "CatalogItem",
    "IMAGE_EXTENSIONS",
    "SHOP_FIELDS",
    "missing_images",
    "read_catalog",
    "shop_fields",
    "read_side_info",
    "side_attribute",
    "write_catalog_jsonl",
]

REQUIRED = ("id", "category", "image", "title")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
SHOP_FIELDS = ("price", "brand", "in_stock")
MAX_BRAND = 100  # characters
_TRUE, _FALSE = {"true", "yes", "y", "1"}, {"false", "no", "n", "0"}


class CatalogError(ValueError):
    """A catalog is malformed or unsafe. The message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = Path(path), line, problem
        place = f"line {line}: " if line is not None else ""
        super().__init__(f"{path}: {place}{problem}")


@dataclass
class CatalogItem:
    """One catalog product: its id, category, image file (absolute, resolved) and description;
    `price`, `brand` and `in_stock` are its attributes of those names, checked (None: not known)."""

    id: str
    category: str
    image: Path
    title: str
    attributes: dict[str, Any] = field(default_factory=dict)
    price: float | None = None
    brand: str | None = None
    in_stock: bool | None = None


# ----------------------------------------------------------------------------------------- read


def read_catalog(path: Path | str) -> list[CatalogItem]:
    """Read a catalog from a CSV file, a JSONL file or a folder of category sub-folders."""
    path = Path(path)
    if path.is_dir():
        items = _read_folder(path)
    elif not path.is_file():
        raise CatalogError(path, None, "no such file or folder")
    elif path.suffix.lower() == ".csv":
        items = _unique(path, _read_csv(path))
    elif path.suffix.lower() in JSONL_SUFFIXES:
        items = _unique(path, _read_jsonl(path))
    else:
        raise CatalogError(path, None, "unknown catalog type; expected .csv, .jsonl or a folder")
    log.info("read %d catalog items from %s", len(items), path)
    return items


def _unique(path: Path, rows: Iterable[tuple[int, CatalogItem]]) -> list[CatalogItem]:
    seen: dict[str, int] = {}
    items = []
    for line, item in rows:
        if item.id in seen:
            raise CatalogError(
                path, line, f"duplicate id {item.id!r} (first on line {seen[item.id]})"
            )
        seen[item.id] = line
        items.append(item)
    return items


def _resolve_image(path: Path, line: int | None, root: Path, raw: str) -> Path:
    """Resolve `raw` against `root` (already resolved); refuse anything that lands outside it."""
    try:
        resolved = (root / raw).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # NUL bytes, symlink loops
        raise CatalogError(path, line, f"image path {raw!r} cannot be resolved: {exc}") from exc
    if not resolved.is_relative_to(root):
        raise CatalogError(
            path,
            line,
            f"image path {raw!r} resolves to {resolved}, outside the catalog root {root}",
        )
    return resolved


def _text_field(path: Path, line: int, row: dict[str, Any], key: str) -> str:
    if key not in row:
        raise CatalogError(path, line, f"missing key {key!r}")
    value = row[key]
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise CatalogError(path, line, f"{key!r} must be a string, got {value!r}")
    if key != "title" and not value.strip():
        raise CatalogError(path, line, f"empty {key!r}")
    return value.strip() if key != "image" else value


def _item(path: Path, line: int, root: Path, row: dict[str, Any], attributes: dict) -> CatalogItem:
    price, brand, in_stock = shop_fields(path, line, attributes)
    return CatalogItem(
        id=_text_field(path, line, row, "id"),
        category=_text_field(path, line, row, "category"),
        image=_resolve_image(path, line, root, _text_field(path, line, row, "image")),
        title=_text_field(path, line, row, "title"),
        attributes=attributes,
        price=price,
        brand=brand,
        in_stock=in_stock,
    )


def shop_fields(
    path: Path | str, line: int | None, values: dict[str, Any]
) -> tuple[float | None, str | None, bool | None]:
    """``(price, brand, in_stock)`` from a product's attributes, checked; an absent or empty
    value is None. A bad one is a CatalogError naming the file, the line and the value."""
    price, brand, stock = (values.get(key) for key in SHOP_FIELDS)
    price, brand, stock = (None if v is None or v == "" else v for v in (price, brand, stock))
    return (
        None if price is None else _price(path, line, price),
        None if brand is None else _brand(path, line, brand),
        None if stock is None else _in_stock(path, line, stock),
    )


def _price(path: Path | str, line: int | None, value: Any) -> float:
    number = None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):  # "12.5", " 12 ", 1e3; not "$12" or "12,50"
            number = float(value)
    if number is None or not 0 <= number < math.inf:
        raise CatalogError(
            path, line, f"'price' must be a number >= 0 (such as 12.5); got {value!r}"
        )
    return number


def _brand(path: Path | str, line: int | None, value: Any) -> str | None:
    if not isinstance(value, str) or len(value.strip()) > MAX_BRAND:
        raise CatalogError(
            path, line, f"'brand' must be text of at most {MAX_BRAND} characters; got {value!r}"
        )
    return value.strip() or None


def _in_stock(path: Path | str, line: int | None, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, str | int) else ""
    if word not in _TRUE | _FALSE:
        raise CatalogError(
            path, line, f"'in_stock' must be true or false (yes/no, 1/0); got {value!r}"
        )
    return word in _TRUE


def _read_csv(path: Path) -> Iterator[tuple[int, CatalogItem]]:
    root = path.parent.resolve()
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise CatalogError(path, 1, f"missing column(s) {missing}; the header is {header}")
        try:
            for row in reader:
                line = reader.line_num
                if None in row or None in row.values():
                    raise CatalogError(
                        path, line, f"expected {len(header)} fields as in the header"
                    )
                extra = {k: v for k, v in row.items() if k not in REQUIRED}
                yield line, _item(path, line, root, row, extra)
        except csv.Error as exc:
            raise CatalogError(path, reader.line_num, f"bad CSV: {exc}") from exc


def _json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; CatalogError naming the line otherwise."""
    try:
        yield from read_jsonl(path, encoding="utf-8-sig")
    except JsonLinesError as exc:
        raise CatalogError(path, exc.line, exc.problem) from exc


def _read_jsonl(path: Path) -> Iterator[tuple[int, CatalogItem]]:
    root = path.parent.resolve()
    for line, row in _json_objects(path):
        yield line, _item(path, line, root, row, _json_attributes(path, line, row))


def _json_attributes(path: Path, line: int, row: dict[str, Any]) -> dict[str, Any]:
    nested = row.get("attributes", {})
    if not isinstance(nested, dict):
        raise CatalogError(path, line, f"'attributes' must be an object, got {nested!r}")
    extra = {k: v for k, v in row.items() if k not in REQUIRED and k != "attributes"}
    return {**nested, **extra}


def _read_folder(folder: Path) -> list[CatalogItem]:
    root = folder.resolve()
    items: list[CatalogItem] = []
    for category_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if category_dir.name.startswith("."):
            continue
        for file in sorted(category_dir.iterdir()):
            if file.name.startswith(".") or file.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            image = _resolve_image(file, None, root, str(file.relative_to(folder)))
            items.append(_folder_item(category_dir.name, file, image))
    seen: set[str] = set()
    for item in items:
        if item.id in seen:  # e.g. shoe.jpg beside shoe.png
            raise CatalogError(folder, None, f"duplicate id {item.id!r}: two images share a name")
        seen.add(item.id)
    return items


def folder_id(category: str, stem: str) -> str:
    """A folder catalog's product id: `<category>.<file name>`, letters, digits, `_` and `-`
    kept and any other run of characters made one `-`, so the API can address it (no `/`)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "item"
    return f"{category}.{slug}"[:64]


def _folder_item(category: str, file: Path, image: Path) -> CatalogItem:
    title = file.stem.replace("_", " ").replace("-", " ").strip()
    return CatalogItem(
        id=folder_id(category, file.stem), category=category, image=image, title=title
    )


# ---------------------------------------------------------------------------------------- write


def write_catalog_jsonl(items: Iterable[CatalogItem], path: Path | str) -> Path:
    """Write `items` as JSONL with image paths relative to the file's folder (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    rows = [_json_row(path, root, item) for item in items]  # all checked before writing
    write_jsonl_atomic(path, rows, ensure_ascii=False)
    return path


def _json_row(path: Path, root: Path, item: CatalogItem) -> dict[str, Any]:
    image = Path(item.image).resolve()
    if not image.is_relative_to(root):
        raise CatalogError(
            path, None, f"item {item.id!r}: image {image} is outside the catalog folder {root}"
        )
    offer = {"price": item.price, "brand": item.brand, "in_stock": item.in_stock}
    return {
        "id": item.id,
        "category": item.category,
        "image": image.relative_to(root).as_posix(),
        "title": item.title,
        "attributes": item.attributes,
        **{key: value for key, value in offer.items() if value is not None},
    }


def missing_images(items: Iterable[CatalogItem]) -> list[CatalogItem]:
    """The items whose image file does not exist (to be skipped and reported, not raised)."""
    return [item for item in items if not item.image.is_file()]


def read_side_info(source: Path | str) -> dict[str, dict[str, Any]]:
    """Product id -> its catalog.jsonl object (title, category, attributes...): side information.

    `source` is a catalog.jsonl file or a folder holding one (a Street2Shop-layout set keeps one
    beside its meta/). Absent file: an empty mapping. Unlike `read_catalog` it needs no images
    and checks no paths; a malformed line is a CatalogError naming the file and the line.
    """
    path = Path(source)
    path = path / "catalog.jsonl" if path.is_dir() else path
    if path.suffix not in JSONL_SUFFIXES or not path.is_file():
        return {}
    info: dict[str, dict[str, Any]] = {}
    for line, item in _json_objects(path):
        if item.get("id") in (None, ""):
            raise CatalogError(path, line, "missing id")
        _json_attributes(path, line, item)  # an object, or a CatalogError
        info[str(item["id"])] = item
    return info


def side_attribute(info: dict[str, dict[str, Any]], key: str) -> dict[int, str]:
    """Numeric product id -> `attributes[key]`, for the products that have it."""
    out: dict[int, str] = {}
    for product, item in info.items():
        value = (item.get("attributes") or {}).get(key)
        if product.isdigit() and value not in (None, ""):
            out[int(product)] = str(value)
    return out
