"""Read, validate and write data sets in the Exact Street2Shop layout (see README, "Data layout").

ROOT/photos.txt                          id,url per line (url: where the photo came from)
ROOT/photos/<id>.jpg|.png                 the images, stored by id
ROOT/meta/json/retrieval_<cat>.json       [{"photo": id, "product": id}, ...]   shop images
ROOT/meta/json/train_pairs_<cat>.json     [{"photo", "product", "bbox": {left,top,width,height}}]
ROOT/meta/json/test_pairs_<cat>.json      street photos with the box of the item
ROOT/meta/json/street_objects.json        optional: the other products seen in street photos,
                                          [{"photo", "product" (id or null), "category", "bbox",
                                            "visible" (share of the object not hidden)}]
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from visnet.images import ImageError, load_image
from visnet.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "test")
OBJECTS_FILE = "street_objects.json"
_FILE_RE = re.compile(r"^(retrieval|train_pairs|test_pairs)_(.+)\.json$")


class DataFormatError(ValueError):
    """A data file is malformed. The message names the file and the place in it."""

    def __init__(self, path: Path | str, place: str, problem: str) -> None:
        self.path, self.place, self.problem = Path(path), place, problem
        super().__init__(f"{path}: {place}: {problem}")


@dataclass(frozen=True)
class Box:
    left: float
    top: float
    width: float
    height: float

    def as_xyxy(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.left + self.width, self.top + self.height)

    def to_json(self) -> dict[str, float]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class ShopImage:
    """One catalog view: a shop photo of a product."""

    photo: int
    product: int
    category: str


@dataclass(frozen=True)
class StreetPair:
    """One street photo, the product it shows, and the box of the item in it."""

    photo: int
    product: int
    category: str
    bbox: Box


@dataclass(frozen=True)
class StreetObject:
    """Another product seen in a street photo (clutter): shop the look scores finding it too.

    `product` is None where the object is no catalog product; `visible` is the share of it that
    shows (the rest hidden behind other things or outside the frame).
    """

    photo: int
    product: int | None
    category: str
    bbox: Box
    visible: float


@dataclass
class Street2ShopSet:
    """A whole data set, in memory. Images stay on disk; `photo_path` finds them."""

    root: Path
    shop: list[ShopImage] = field(default_factory=list)
    pairs: dict[str, list[StreetPair]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    urls: dict[int, str] = field(default_factory=dict)
    objects: list[StreetObject] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        names = {s.category for s in self.shop}
        for split in self.pairs.values():
            names.update(p.category for p in split)
        return sorted(names)

    def shop_in(self, category: str) -> list[ShopImage]:
        return [s for s in self.shop if s.category == category]

    def products(self) -> dict[int, str]:
        """Product id -> category, over the shop images."""
        return {s.product: s.category for s in self.shop}

    def photo_path(self, photo: int) -> Path | None:
        return photo_path(self.root, photo)

    def load_photo(self, photo: int) -> Image.Image:
        """The photo decoded (RGB); `ImageError` when it is missing or unreadable."""
        path = self.photo_path(photo)
        if path is None:
            raise ImageError(f"photo {photo} is missing")
        return load_image(path)

    def readable_photos(self, photos: Iterable[int]) -> Iterator[tuple[int, Image.Image]]:
        """(photo, decoded image) for each of `photos` that loads; a missing or unreadable one
        is skipped with a warning, and their count is logged at the end."""
        skipped = 0
        for photo in photos:
            try:
                image = self.load_photo(photo)
            except ImageError as exc:
                log.warning("skipping photo %d: %s", photo, exc)
                skipped += 1
                continue
            yield photo, image
        if skipped:
            log.warning("skipped %d photos (missing or unreadable)", skipped)

    def objects_by_photo(self, min_visible: float = 0.0) -> dict[int, list[StreetObject]]:
        """Photo -> the other products seen in it, those at least `min_visible` in view."""
        found: dict[int, list[StreetObject]] = {}
        for item in self.objects:
            if item.visible >= min_visible:
                found.setdefault(item.photo, []).append(item)
        return found


def photo_path(root: Path | str, photo: int) -> Path | None:
    """The image file of `photo` under ROOT/photos, or None if it is missing."""
    base = Path(root) / "photos" / str(photo)
    for ext in PHOTO_EXTENSIONS:
        candidate = base.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------- read


def read_set(root: Path | str, check_boxes: bool = True) -> Street2ShopSet:
    """Load and validate a Street2Shop-layout set. Raises DataFormatError on a malformed file."""
    root = Path(root)
    meta = root / "meta" / "json"
    if not meta.is_dir():
        raise DataFormatError(
            root, "meta/json", "folder not found; is this a Street2Shop-layout set?"
        )
    data = Street2ShopSet(root=root, urls=_read_photos_txt(root / "photos.txt"))
    files = sorted(p for p in meta.iterdir() if _FILE_RE.match(p.name))
    for path in (p for p in files if p.name.startswith("retrieval_")):
        category = _FILE_RE.match(path.name).group(2)  # type: ignore[union-attr]
        data.shop.extend(_parse_shop(path, category))
    if not data.shop:
        raise DataFormatError(
            meta, "retrieval_<category>.json", "no catalog (retrieval) files found"
        )
    known = data.products()
    for path in (p for p in files if not p.name.startswith("retrieval_")):
        kind, category = _FILE_RE.match(path.name).groups()  # type: ignore[union-attr]
        split = kind.removesuffix("_pairs")
        data.pairs[split].extend(_parse_pairs(path, category, known, root if check_boxes else None))
    if (meta / OBJECTS_FILE).is_file():
        data.objects = list(_parse_objects(meta / OBJECTS_FILE, known))
    return data


def _load_json_list(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, "file", f"cannot read: {exc}") from exc
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"line {exc.lineno}, column {exc.colno}", exc.msg) from exc
    if not isinstance(items, list):
        raise DataFormatError(
            path, "top level", f"expected a JSON list, got {type(items).__name__}"
        )
    return items


def _int_field(path: Path, place: str, item: Any, key: str) -> int:
    if not isinstance(item, dict):
        raise DataFormatError(path, place, f"expected an object, got {type(item).__name__}")
    if key not in item:
        raise DataFormatError(path, place, f"missing field {key!r}")
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataFormatError(path, place, f"field {key!r} must be an integer id, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(
            path, place, f"field {key!r} must be an integer id, got {value!r}"
        ) from None


def _parse_shop(path: Path, category: str) -> Iterator[ShopImage]:
    for i, item in enumerate(_load_json_list(path)):
        place = f"item {i}"
        yield ShopImage(
            photo=_int_field(path, place, item, "photo"),
            product=_int_field(path, place, item, "product"),
            category=category,
        )


def _parse_box(path: Path, place: str, item: dict) -> Box:
    raw = item.get("bbox")
    if not isinstance(raw, dict):
        raise DataFormatError(path, place, "missing or non-object field 'bbox'")
    values = {}
    for key in ("left", "top", "width", "height"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataFormatError(path, place, f"bbox.{key} must be a number, got {value!r}")
        values[key] = value
    box = Box(**values)
    if box.width <= 0 or box.height <= 0 or box.left < 0 or box.top < 0:
        raise DataFormatError(path, place, f"bbox {box.to_json()} is empty or negative")
    return box


def _parse_pairs(
    path: Path, category: str, known: dict[int, str], root: Path | None
) -> Iterator[StreetPair]:
    for i, item in enumerate(_load_json_list(path)):
        place = f"item {i}"
        photo = _int_field(path, place, item, "photo")
        product = _int_field(path, place, item, "product")
        if product not in known:
            raise DataFormatError(path, place, f"product {product} is in no retrieval_*.json file")
        box = _parse_box(path, place, item)
        if root is not None:
            _check_box_inside(path, place, root, photo, box)
        yield StreetPair(photo=photo, product=product, category=category, bbox=box)


def _parse_objects(path: Path, known: dict[int, str]) -> Iterator[StreetObject]:
    for i, item in enumerate(_load_json_list(path)):
        place = f"item {i}"
        photo = _int_field(path, place, item, "photo")
        product = None if item.get("product") is None else _int_field(path, place, item, "product")
        if product is not None and product not in known:
            raise DataFormatError(path, place, f"product {product} is in no retrieval_*.json file")
        category = item.get("category")
        if not isinstance(category, str) or not category:
            raise DataFormatError(path, place, f"field 'category' must be a name, got {category!r}")
        visible = item.get("visible", 1.0)
        if (
            isinstance(visible, bool)
            or not isinstance(visible, int | float)
            or not 0 <= visible <= 1
        ):
            raise DataFormatError(
                path, place, f"field 'visible' must be in [0, 1], got {visible!r}"
            )
        yield StreetObject(photo, product, category, _parse_box(path, place, item), float(visible))


def _check_box_inside(path: Path, place: str, root: Path, photo: int, box: Box) -> None:
    image_path = photo_path(root, photo)
    if image_path is None:
        return  # missing images are skipped and reported by whoever reads pixels, not raised
    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except Exception:
        return  # a bad image is reported where it is decoded
    right, bottom = box.left + box.width, box.top + box.height
    if right > width + 1 or bottom > height + 1:
        raise DataFormatError(
            path, place, f"bbox {box.to_json()} lies outside photo {photo} ({width}x{height})"
        )


def _read_photos_txt(path: Path) -> dict[int, str]:
    urls: dict[int, str] = {}
    if not path.is_file():
        return urls
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            photo, sep, url = line.partition(",")
            if not sep or not photo.strip().isdigit():
                raise DataFormatError(
                    path, f"line {lineno}", f"expected 'id,url', got {line[:80]!r}"
                )
            urls[int(photo)] = url.strip()
    return urls


# ---------------------------------------------------------------------------------------- write


def write_set(data: Street2ShopSet, root: Path | str | None = None) -> Path:
    """Write the metadata of `data` under `root` (default: data.root). Images are not copied."""
    root = Path(root or data.root)
    meta = root / "meta" / "json"
    meta.mkdir(parents=True, exist_ok=True)
    for stale in meta.iterdir():  # a category dropped since an earlier write must not linger
        match = _FILE_RE.match(stale.name)
        if match and match.group(2) not in data.categories:
            stale.unlink()
    for category in data.categories:
        shop = [
            {"photo": s.photo, "product": s.product} for s in data.shop if s.category == category
        ]
        write_json_atomic(meta / f"retrieval_{category}.json", shop, indent=0)
        for split in SPLITS:
            pairs = [
                {"photo": p.photo, "product": p.product, "bbox": p.bbox.to_json()}
                for p in data.pairs.get(split, [])
                if p.category == category
            ]
            write_json_atomic(meta / f"{split}_pairs_{category}.json", pairs, indent=0)
    if data.objects:
        objects = [
            {
                "photo": o.photo,
                "product": o.product,
                "category": o.category,
                "bbox": o.bbox.to_json(),
                "visible": round(o.visible, 3),
            }
            for o in data.objects
        ]
        write_json_atomic(meta / OBJECTS_FILE, objects, indent=0)
    elif (meta / OBJECTS_FILE).exists():
        (meta / OBJECTS_FILE).unlink()
    lines = (f"{photo},{url}\n" for photo, url in sorted(data.urls.items()))
    write_text_atomic(root / "photos.txt", "".join(lines))
    return root


# ---------------------------------------------------------------------------------------- check


@dataclass
class SetReport:
    """What a reader of pixels found: how many referenced photos exist, and which do not."""

    shop_images: int
    street_photos: int
    missing: list[int]

    @property
    def skipped(self) -> int:
        return len(self.missing)


def check_images(data: Street2ShopSet) -> SetReport:
    """Count referenced photos whose files are missing. Missing images are reported, not raised."""
    referenced = [s.photo for s in data.shop] + [p.photo for ps in data.pairs.values() for p in ps]
    missing = sorted({photo for photo in referenced if data.photo_path(photo) is None})
    if missing:
        log.warning("%d of %d referenced photos are missing", len(missing), len(set(referenced)))
    street = sum(len(v) for v in data.pairs.values())
    return SetReport(shop_images=len(data.shop), street_photos=street, missing=missing)
