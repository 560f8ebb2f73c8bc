"""Build the demo data set: real installed images -> products, views and street photos on disk.

Stages (each a function): find sources -> cut out and filter -> drop near-duplicates -> plan
products (colour variants, ids, split) -> render views and street photos in parallel -> write the
Street2Shop layout, `catalog.jsonl`, a contact sheet, the licences and `summary.json`.
The set is built in `OUT.partial` and moved into place only when complete.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from visnet.data import compose
from visnet.data.catalog import CatalogItem, write_catalog_jsonl
from visnet.data.sources import (
    DEBIAN_PACKAGES,
    FASHION,
    LICENSES,
    SourceImage,
    background_photos,
    find_sources,
    missing_packages,
)
from visnet.data.street2shop import (
    Box,
    ShopImage,
    Street2ShopSet,
    StreetObject,
    StreetPair,
    write_set,
)
from visnet.io import replace_folder, staging_folder

log = logging.getLogger(__name__)
HUE_NAMES = [
    "red",
    "orange",
    "yellow",
    "lime",
    "green",
    "teal",
    "cyan",
    "azure",
    "blue",
    "violet",
    "purple",
    "magenta",
]


@dataclass(frozen=True)
class DemoSettings:
    seed: int = 0
    street_per_product: int = 3
    fashion_variants: int = 2  # extra colours per fashion item
    other_variants: int = 1  # extra colours per other item
    min_variant_saturation: float = 0.12  # greyish items get no colour variants
    test_fraction: float = 0.25
    limit: int = 0  # use at most this many source images (0: all)
    workers: int = 0  # 0: one per core
    min_side: int = 96
    duplicate_bits: int = 4  # dHash Hamming distance at or under which two images are one


@dataclass
class Product:
    id: int
    base: int  # index into the cut-out list
    category: str
    title: str
    hue: float | None
    split: str
    views: list[int]
    street: list[int]
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    # per street photo: the other products pasted into it, (cut-out key, Placed)
    others: list[list[tuple[int, compose.Placed]]] = field(default_factory=list)


# Worker state, set before the pool forks so workers inherit it without pickling.
_STATE: dict[str, Any] = {}


def build_demo(out: Path | str, settings: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Build the demo set under `out`; return (and write) its summary."""
    out = Path(out)
    missing = missing_packages()
    if missing:
        raise FileNotFoundError(
            f"the demo set needs Debian packages that are not installed: {', '.join(missing)}; "
            f"run: sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}"
        )
    started = time.time()
    sources = find_sources()
    if settings.limit:
        step = max(1, len(sources) // settings.limit)
        sources = sources[::step][: settings.limit]
    staging = staging_folder(out)
    (staging / "photos").mkdir(parents=True)
    workers = settings.workers or os.cpu_count() or 1

    cutouts, rejected = cut_out_all(sources, settings, workers)
    keep, duplicates = drop_near_duplicates(cutouts, settings.duplicate_bits)
    rng = np.random.default_rng(settings.seed)
    products = plan_products(keep, cutouts, sources, settings, rng)
    render_all(products, cutouts, staging, settings, workers)

    data = _street2shop(products, staging, sources)
    write_set(data)
    _write_catalog(products, cutouts, sources, staging)
    contact_sheet(products, data, staging / "contact_sheet.png", rng)
    _write_licences(staging)
    summary = _summary(products, data, cutouts, rejected, duplicates, time.time() - started)
    summary["settings"] = asdict(settings)
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    replace_folder(staging, out)
    return summary


# ----------------------------------------------------------------------------------- cut-outs


def _cut_one(index: int) -> tuple[int, compose.Cutout | str]:
    source: SourceImage = _STATE["sources"][index]
    try:
        image = compose.render_source(source.path)
        return index, compose.make_cutout(image, _STATE["min_side"])
    except compose.RejectedImage as exc:
        return index, str(exc)
    except Exception as exc:  # one odd file must never stop the build
        return index, f"unexpected {type(exc).__name__}: {exc}"


def cut_out_all(
    sources: list[SourceImage], settings: DemoSettings, workers: int
) -> tuple[dict[int, compose.Cutout], Counter]:
    """Cut out every source image in parallel; count the rejected ones by reason."""
    _STATE.update(sources=sources, min_side=settings.min_side)
    cutouts: dict[int, compose.Cutout] = {}
    rejected: Counter = Counter()
    with _pool(workers) as pool:
        results = pool.imap_unordered(_cut_one, range(len(sources)), chunksize=8)
        for index, result in tqdm(results, total=len(sources), desc="cut out", unit="img"):
            if isinstance(result, str):
                rejected[result.split(":")[0]] += 1
                log.debug("skipped %s: %s", sources[index].path, result)
            else:
                cutouts[index] = result
    return cutouts, rejected


def _pool(workers: int) -> Any:
    return mp.get_context("fork").Pool(workers)


def drop_near_duplicates(
    cutouts: dict[int, compose.Cutout], max_bits: int
) -> tuple[list[int], int]:
    """Keep the first of each group of images with near-equal difference hash and colour."""
    order = sorted(cutouts)
    signatures = [compose.signature(cutouts[i]) for i in order]
    bits = np.stack([s[0] for s in signatures])
    colours = np.stack([s[1] for s in signatures])
    keep: list[int] = []
    kept_rows: list[int] = []
    for row, index in enumerate(order):
        if kept_rows:
            hamming = (bits[kept_rows] != bits[row]).sum(axis=1)
            colour_gap = np.abs(colours[kept_rows] - colours[row]).max(axis=1)
            if np.any((hamming <= max_bits) & (colour_gap < 12)):
                continue
        keep.append(index)
        kept_rows.append(row)
    return keep, len(order) - len(keep)


# ------------------------------------------------------------------------------------ planning


def plan_products(
    keep: list[int],
    cutouts: dict[int, compose.Cutout],
    sources: list[SourceImage],
    settings: DemoSettings,
    rng: np.random.Generator,
) -> list[Product]:
    """Products (bases and colour variants), their split by base, and their photo ids."""
    test_bases = _split_bases(keep, sources, settings.test_fraction, rng)
    products: list[Product] = []
    next_photo = 1
    for base in keep:
        source, cut = sources[base], cutouts[base]
        extra = settings.fashion_variants if source.category in FASHION else settings.other_variants
        if cut.saturation < settings.min_variant_saturation:
            extra = 0
        hues: list[float | None] = [None]
        start = rng.uniform(0.15, 0.35)
        hues += [float((start + i / (extra + 1)) % 1.0) for i in range(extra)]
        for hue in hues:
            views = list(range(next_photo, next_photo + 2))
            street = list(range(next_photo + 2, next_photo + 2 + settings.street_per_product))
            next_photo = street[-1] + 1 if street else views[-1] + 1
            title = source.title if hue is None else f"{source.title} ({_hue_name(hue)} variant)"
            split = "test" if base in test_bases else "train"
            products.append(
                Product(len(products) + 1, base, source.category, title, hue, split, views, street)
            )
    return products


def _split_bases(
    keep: list[int], sources: list[SourceImage], fraction: float, rng: np.random.Generator
) -> set[int]:
    # Split by base image, so no shape seen in training reappears in test in another colour.
    by_category: dict[str, list[int]] = {}
    for base in keep:
        by_category.setdefault(sources[base].category, []).append(base)
    test: set[int] = set()
    for _category, bases in sorted(by_category.items()):
        if len(bases) < 2:
            continue
        count = max(1, int(round(fraction * len(bases))))
        test.update(int(b) for b in rng.choice(bases, size=count, replace=False))
    return test


def _hue_name(shift: float) -> str:
    return HUE_NAMES[int(shift * len(HUE_NAMES)) % len(HUE_NAMES)]


# ----------------------------------------------------------------------------------- rendering


def _render_one(task: tuple[Product, int]) -> tuple[int, list[Any], list[Any]]:
    product, seed = task
    rng = np.random.default_rng(seed)
    cutouts: dict[int, compose.Cutout] = _STATE["cutouts"]
    cut = cutouts[product.base].rgba
    if product.hue is not None:
        cut = compose.hue_shift(cut, product.hue)
    photos: Path = _STATE["photos"]
    compose.plain_view(cut).save(photos / f"{product.views[0]}.jpg", quality=92)
    compose.styled_view(cut, rng).save(photos / f"{product.views[1]}.jpg", quality=92)
    boxes, others = [], []
    keys = _STATE["cutout_keys"]
    backgrounds = _STATE["backgrounds"]
    for photo in product.street:
        drawn = [keys[int(i)] for i in rng.integers(0, len(keys), size=3)]
        chosen = [k for k in drawn if cutouts[k].rgba is not cutouts[product.base].rgba][
            : int(rng.integers(0, 4))
        ]
        background = backgrounds[int(rng.integers(0, len(backgrounds)))]
        scene, box, placed = compose.street_photo(
            cut, background, [cutouts[k].rgba for k in chosen], rng
        )
        scene.save(photos / f"{photo}.jpg", quality=95)
        boxes.append(box)
        others.append([(chosen[p.clutter], p) for p in placed])
    return product.id, boxes, others


def render_all(
    products: list[Product],
    cutouts: dict[int, compose.Cutout],
    staging: Path,
    settings: DemoSettings,
    workers: int,
) -> None:
    """Write every product's views and street photos; record each street photo's box."""
    backgrounds = []
    for path, _package in background_photos():
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            image.thumbnail((1024, 1024))
            backgrounds.append(image)
    _STATE.update(
        cutouts=cutouts,
        cutout_keys=sorted(cutouts),
        backgrounds=backgrounds,
        photos=staging / "photos",
    )
    seeds = np.random.SeedSequence(settings.seed).spawn(len(products))
    tasks = [(p, int(s.generate_state(1)[0])) for p, s in zip(products, seeds, strict=True)]
    by_id = {p.id: p for p in products}
    with _pool(workers) as pool:
        results = pool.imap_unordered(_render_one, tasks, chunksize=4)
        for product_id, boxes, others in tqdm(
            results, total=len(tasks), desc="render", unit="product"
        ):
            by_id[product_id].boxes, by_id[product_id].others = boxes, others


# -------------------------------------------------------------------------------------- output


def _street2shop(products: list[Product], root: Path, sources: list[SourceImage]) -> Street2ShopSet:
    data = Street2ShopSet(root=root)
    # the product a clutter cut-out is: its uncoloured product (none for a dropped near-duplicate)
    plain = {p.base: p.id for p in products if p.hue is None}
    for p in products:
        for photo in p.views:
            data.shop.append(ShopImage(photo, p.id, p.category))
            data.urls[photo] = f"photos/{photo}.jpg"
        for photo, (left, top, width, height) in zip(p.street, p.boxes, strict=True):
            data.pairs[p.split].append(
                StreetPair(photo, p.id, p.category, Box(left, top, width, height))
            )
            data.urls[photo] = f"photos/{photo}.jpg"
        for photo, others in zip(p.street, p.others, strict=True):
            data.objects.extend(
                StreetObject(photo, plain.get(key), sources[key].category, Box(*o.box), o.visible)
                for key, o in others
                if o.visible > 0
            )
    return data


def _write_catalog(
    products: list[Product],
    cutouts: dict[int, compose.Cutout],
    sources: list[SourceImage],
    root: Path,
) -> None:
    base_product: dict[int, int] = {}
    items = []
    for p in products:
        base_product.setdefault(p.base, p.id)
        source = sources[p.base]
        attributes = {
            "variant_of": base_product[p.base],
            "hue_shift": p.hue,
            "kind": cutouts[p.base].kind,
            "split": p.split,
            "views": p.views,
            "source": str(source.path),
            "package": source.package,
        }
        image = (root / "photos" / f"{p.views[0]}.jpg").resolve()
        items.append(CatalogItem(str(p.id), p.category, image, p.title, attributes))
    write_catalog_jsonl(items, root / "catalog.jsonl")


def contact_sheet(
    products: list[Product], data: Street2ShopSet, path: Path, rng: np.random.Generator
) -> None:
    """A PNG grid of sample products: plain view, styled view, and street photos with boxes."""
    by_category: dict[str, list[Product]] = {}
    for p in products:
        by_category.setdefault(p.category, []).append(p)
    sample = [group[int(rng.integers(0, len(group)))] for _, group in sorted(by_category.items())]
    cell, columns = 160, 2 + max(len(p.street) for p in products)
    sheet = Image.new("RGB", (cell * columns, cell * len(sample)), "white")
    draw = ImageDraw.Draw(sheet)
    boxes = {pair.photo: pair.bbox for split in data.pairs.values() for pair in split}
    for row, product in enumerate(sample):
        for col, photo in enumerate(product.views + product.street):
            with Image.open(data.root / "photos" / f"{photo}.jpg") as opened:
                image = opened.convert("RGB")
                if photo in boxes:
                    b = boxes[photo]
                    ImageDraw.Draw(image).rectangle(b.as_xyxy(), outline=(255, 0, 0), width=3)
                image.thumbnail((cell - 4, cell - 16))
                sheet.paste(image, (col * cell + 2, row * cell + 14))
        draw.text((4, row * cell), f"{product.category}: {product.title}"[:60], fill="black")
    sheet.save(path)


def _write_licences(root: Path) -> None:
    lines = ["# Licences of the images in this data set", ""]
    lines += [f"- **{name}**: {text}" for name, text in LICENSES.items()]
    lines += ["", "Each product's source file is named in catalog.jsonl (attributes.source)."]
    (root / "LICENSES.md").write_text("\n".join(lines) + "\n")


def _summary(
    products: list[Product],
    data: Street2ShopSet,
    cutouts: dict[int, compose.Cutout],
    rejected: Counter,
    duplicates: int,
    seconds: float,
) -> dict[str, Any]:
    per_category = Counter(p.category for p in products)
    return {
        "products": len(products),
        "categories": sorted(per_category),
        "catalog_images": len(data.shop),
        "street_photos": sum(len(v) for v in data.pairs.values()),
        "train_pairs": len(data.pairs["train"]),
        "test_pairs": len(data.pairs["test"]),
        "products_per_category": dict(sorted(per_category.items())),
        "photo_products": sum(1 for p in products if cutouts[p.base].kind == "photo"),
        "colour_variants": sum(1 for p in products if p.hue is not None),
        "test_products": sum(1 for p in products if p.split == "test"),
        "skipped_sources": dict(rejected.most_common()),
        "near_duplicates_dropped": duplicates,
        "seconds": round(seconds, 1),
    }
