"""A tiny procedural Street2Shop-layout set (coloured shapes on white and on noise) for tests.

ROOT/photos/<id>.jpg          catalog views (white background) and street photos (textured)
ROOT/meta/json/...            written by street2shop.write_set; products split train/test
ROOT/catalog.jsonl            one item per product (its first view), via write_catalog_jsonl
ROOT/summary.json             what was built
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visnet.data.catalog import CatalogItem, write_catalog_jsonl
from visnet.data.street2shop import Box, ShopImage, Street2ShopSet, StreetPair, write_set

__all__ = ["SHAPES", "make_synthetic_set"]

SHAPES = ("circle", "square", "triangle", "stripes")
TEST_FRACTION = 0.25
JPEG_QUALITY = 90


@dataclass(frozen=True)
class _Product:
    id: int
    category: str
    shape: str
    colour: tuple[int, int, int]

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


def make_synthetic_set(
    out: Path | str,
    seed: int = 0,
    categories: int = 3,
    products_per_category: int = 4,
    views: int = 2,
    street_per_product: int = 2,
    size: int = 64,
) -> dict:
    """Build the set under `out` and return its summary. The same seed gives identical metadata."""
    _check_arguments(categories, products_per_category, views, street_per_product, size)
    root = Path(out)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    products = _make_products(categories, products_per_category)
    data = Street2ShopSet(root=root)
    next_photo = _write_catalog_views(data, products, views, size, rng)
    test_ids = _split_products(products, rng)
    street_side = max(128, 2 * size)
    for product in products:
        split = "test" if product.id in test_ids else "train"
        for _ in range(street_per_product):
            pair = _write_street_photo(root, next_photo, product, street_side, rng)
            data.pairs[split].append(pair)
            data.urls[next_photo] = f"synthetic://street/{next_photo}"
            next_photo += 1
    write_set(data)
    _write_catalog(root, data, products)
    return _write_summary(root, data, products)


def _check_arguments(
    categories: int, per_category: int, views: int, street: int, size: int
) -> None:
    if categories < 1 or views < 1 or street < 1:
        raise ValueError(
            f"categories, views and street_per_product must be >= 1; "
            f"got {categories}, {views}, {street}"
        )
    if per_category < 2:
        raise ValueError(
            f"products_per_category must be >= 2 so both splits get a product; got {per_category}"
        )
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels; got {size}")


def _make_products(categories: int, per_category: int) -> list[_Product]:
    """Shapes by category, hues spread evenly over all products so every colour is distinct."""
    total = categories * per_category
    products = []
    for c in range(categories):
        shape = SHAPES[c % len(SHAPES)]
        category = shape if c < len(SHAPES) else f"{shape}{c // len(SHAPES) + 1}"
        for k in range(per_category):
            index = c * per_category + k
            # interleave hues so neighbours in a category are far apart on the colour wheel
            hue = ((k * categories + c) / total) % 1.0
            red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.9)
            colour = (round(red * 255), round(green * 255), round(blue * 255))
            products.append(_Product(index + 1, category, shape, colour))
    return products


def _split_products(products: list[_Product], rng: np.random.Generator) -> set[int]:
    """Per category, a quarter of the products (at least one, never all) go to test."""
    test: set[int] = set()
    for category in sorted({p.category for p in products}):
        ids = [p.id for p in products if p.category == category]
        count = min(len(ids) - 1, max(1, round(len(ids) * TEST_FRACTION)))
        test.update(int(i) for i in rng.choice(ids, size=count, replace=False))
    return test


# --------------------------------------------------------------------------------------- render


def _draw_product(product: _Product, side: int) -> Image.Image:
    """The product as an RGBA sprite of `side` x `side` pixels on transparency."""
    sprite = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)
    fill = (*product.colour, 255)
    m = max(1, side // 10)
    if product.shape == "circle":
        draw.ellipse((m, m, side - m - 1, side - m - 1), fill=fill)
    elif product.shape == "square":
        draw.rectangle((m, m, side - m - 1, side - m - 1), fill=fill)
    elif product.shape == "triangle":
        draw.polygon([(side // 2, m), (side - m - 1, side - m - 1), (m, side - m - 1)], fill=fill)
    else:
        dark = (*(v // 2 for v in product.colour), 255)
        band = max(2, (side - 2 * m) // 6)
        for i, top in enumerate(range(m, side - m, band)):
            bottom = min(top + band, side - m) - 1
            draw.rectangle((m, top, side - m - 1, bottom), fill=fill if i % 2 == 0 else dark)
    return sprite


def _catalog_view(product: _Product, size: int, view: int, rng: np.random.Generator) -> Image.Image:
    """View 0 is centred and full size; later views are slightly scaled and shifted."""
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    scale = 1.0 if view == 0 else float(rng.uniform(0.8, 0.95))
    side = max(8, round(size * scale))
    slack = size - side
    dx = slack // 2 if view == 0 else int(rng.integers(0, slack + 1))
    dy = slack // 2 if view == 0 else int(rng.integers(0, slack + 1))
    sprite = _draw_product(product, side)
    canvas.paste(sprite, (dx, dy), mask=sprite)
    return canvas


def _background(side: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background: a colour gradient, a few grey blobs of clutter and pixel noise."""
    base = rng.uniform(40, 215, size=3)
    tilt = rng.uniform(-60, 60, size=3)
    ramp = np.linspace(-0.5, 0.5, side)[None, :, None]
    image = np.broadcast_to(base + ramp * tilt, (side, side, 3)).copy()
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, side, size=2)
        w, h = rng.integers(side // 8, side // 3, size=2)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(60, 200)
    image += rng.normal(0.0, 18.0, size=image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _write_street_photo(
    root: Path, photo: int, product: _Product, side: int, rng: np.random.Generator
) -> StreetPair:
    canvas = Image.fromarray(_background(side, rng), mode="RGB")
    sprite_side = int(rng.integers(side // 4, side * 3 // 5 + 1))
    sprite = _draw_product(product, sprite_side)
    left = int(rng.integers(0, side - sprite_side + 1))
    top = int(rng.integers(0, side - sprite_side + 1))
    canvas.paste(sprite, (left, top), mask=sprite)
    canvas.save(root / "photos" / f"{photo}.jpg", quality=JPEG_QUALITY)
    x0, y0, x1, y1 = sprite.getchannel("A").getbbox() or (0, 0, sprite_side, sprite_side)
    box = Box(left=left + x0, top=top + y0, width=x1 - x0, height=y1 - y0)
    return StreetPair(photo=photo, product=product.id, category=product.category, bbox=box)


# ---------------------------------------------------------------------------------------- write


def _write_catalog_views(
    data: Street2ShopSet, products: list[_Product], views: int, size: int, rng: np.random.Generator
) -> int:
    """Write every catalog view; return the next free photo id."""
    photo = 1
    for product in products:
        for view in range(views):
            image = _catalog_view(product, size, view, rng)
            image.save(data.root / "photos" / f"{photo}.jpg", quality=JPEG_QUALITY)
            data.shop.append(ShopImage(photo=photo, product=product.id, category=product.category))
            data.urls[photo] = f"synthetic://shop/{photo}"
            photo += 1
    return photo


def _write_catalog(root: Path, data: Street2ShopSet, products: list[_Product]) -> None:
    first_view: dict[int, int] = {}
    for shop in data.shop:
        first_view.setdefault(shop.product, shop.photo)
    items = [
        CatalogItem(
            id=str(p.id),
            category=p.category,
            image=(root / "photos" / f"{first_view[p.id]}.jpg").resolve(),
            title=f"{p.shape} {p.hex}",
            attributes={"shape": p.shape, "colour": p.hex},
        )
        for p in products
    ]
    write_catalog_jsonl(items, root / "catalog.jsonl")


def _write_summary(root: Path, data: Street2ShopSet, products: list[_Product]) -> dict:
    summary = {
        "products": len(products),
        "categories": data.categories,
        "catalog_images": len(data.shop),
        "street_photos": sum(len(pairs) for pairs in data.pairs.values()),
        "train_pairs": len(data.pairs["train"]),
        "test_pairs": len(data.pairs["test"]),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
