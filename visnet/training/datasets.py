"""Training samples: street-crop/catalog pairs from a Street2Shop set, and triplet files.

Images are decoded once, shrunk to a little above the model's input size, and kept in memory, so
a step costs the network's time, not JPEG decoding (two cores are little).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from visnet.data.street2shop import Box, Street2ShopSet
from visnet.detect.crops import box_iou
from visnet.detect.street_boxes import MIN_IOU, StreetBox
from visnet.images import ImageError, crop_with_margin, load_image
from visnet.io import JsonLinesError, read_jsonl

log = logging.getLogger(__name__)
Transform = Callable[[Image.Image], torch.Tensor]
# Context kept around a street box in the bank, so the random crops of training can jitter it
# (the query crops of search keep `visnet.detect.crops.QUERY_MARGIN`).
JITTER_MARGIN = 0.15


@dataclass(frozen=True)
class ImageRef:
    """An image on disk, optionally cropped by a box."""

    path: Path
    bbox: Box | None = None


class ImageBank:
    """Decoded, shrunk images in memory, keyed by ImageRef; unreadable ones are skipped. Street
    boxes are cut with `margin` of context (a share of the box's sides)."""

    def __init__(self, side: int, margin: float = JITTER_MARGIN) -> None:
        self.side, self.margin = side, margin
        self.images: dict[ImageRef, Image.Image] = {}
        self.skipped: dict[ImageRef, str] = {}

    def load(self, refs: Sequence[ImageRef], desc: str = "load images") -> None:
        for ref in tqdm(sorted(set(refs) - set(self.images), key=str), desc=desc, unit="img"):
            try:
                self.images[ref] = self._read(ref)
            except ImageError as exc:
                self.skipped[ref] = str(exc)
        if self.skipped:
            log.warning("skipped %d unreadable images", len(self.skipped))

    def _read(self, ref: ImageRef) -> Image.Image:
        image = load_image(ref.path)
        if ref.bbox is not None:
            image = crop_with_margin(image, ref.bbox.as_xyxy(), self.margin)
        scale = self.side / min(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        return image

    def __contains__(self, ref: ImageRef) -> bool:
        return ref in self.images

    def __getitem__(self, ref: ImageRef) -> Image.Image:
        return self.images[ref]


@dataclass
class ProductViews:
    """Everything the trainer knows of one product: its catalog views and street crops."""

    product: int
    category: str
    views: list[ImageRef]
    street: list[ImageRef]


def product_table(
    data: Street2ShopSet, products: set[int], split: str = "train"
) -> list[ProductViews]:
    """The products of `products` with their readable catalog views and street crops."""
    table: dict[int, ProductViews] = {}
    for shop in data.shop:
        path = data.photo_path(shop.photo)
        if shop.product in products and path is not None:
            entry = table.setdefault(
                shop.product, ProductViews(shop.product, shop.category, [], [])
            )
            entry.views.append(ImageRef(path))
    for pair in data.pairs.get(split, []):
        path = data.photo_path(pair.photo)
        if pair.product in table and path is not None:
            table[pair.product].street.append(ImageRef(path, pair.bbox))
    return [table[p] for p in sorted(table)]


def add_street_boxes(
    table: list[ProductViews], data: Street2ShopSet, boxes: Sequence[StreetBox]
) -> int:
    """Add each detected box that covers its product (`street_boxes.MIN_IOU`) as another street
    crop of that product, where the photo is one of its train-split pairs. Returns how many."""
    pairs = {(p.photo, p.product) for p in data.pairs.get("train", [])}
    by_product = {entry.product: entry for entry in table}
    added = 0
    for found in boxes:
        entry = by_product.get(found.product)
        if entry is None or found.iou < MIN_IOU or (found.photo, found.product) not in pairs:
            continue
        path = data.photo_path(found.photo)
        if path is None:
            continue
        ref = ImageRef(path, found.box)
        if ref not in entry.street:
            entry.street.append(ref)
            added += 1
    log.info("added %d detected street boxes to %d products", added, len(table))
    return added


# The band of IoU with the labelled box that `add_jittered_boxes` draws from: where a detector's
# box still covers the product but the embedding reads it worse than the label (on validation,
# the shopper's box lost most photos at IoU 0.5-0.7: benchmarks/detector_crops.py).
JITTER_IOU = (0.5, 0.85)
JITTER_SHIFT = 0.3  # each edge moves up to this share of the box's width or height


def jittered_box(box: Box, rng: np.random.Generator, iou: tuple[float, float] = JITTER_IOU) -> Box:
    """A box like a detector's that covers `box` loosely: each edge moved independently (in or
    out) until the IoU with `box` lies in `iou`."""
    x1, y1, x2, y2 = box.as_xyxy()
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    for _ in range(100):
        dx1, dy1, dx2, dy2 = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, 4)
        a = (max(0.0, x1 + dx1 * w), max(0.0, y1 + dy1 * h), x2 + dx2 * w, y2 + dy2 * h)
        wide, tall = a[2] - a[0] >= 2, a[3] - a[1] >= 2
        if wide and tall and iou[0] <= box_iou(a, (x1, y1, x2, y2)) <= iou[1]:
            return Box(a[0], a[1], a[2] - a[0], a[3] - a[1])
    return box  # a degenerate box: keep the label (never reached for boxes of a few pixels)


def add_jittered_boxes(table: list[ProductViews], copies: int, seed: int) -> int:
    """Add `copies` jittered versions (`jittered_box`) of each labelled street box of the table,
    drawn with `seed`, so the same settings cut the same crops (the feature cache keys on them).
    Returns how many."""
    if copies <= 0:
        return 0
    rng = np.random.default_rng(seed)
    added = 0
    for entry in table:
        labelled = list(entry.street)
        for ref in labelled:
            if ref.bbox is None:
                continue
            for _ in range(copies):
                jittered = ImageRef(ref.path, jittered_box(ref.bbox, rng))
                if jittered not in entry.street:
                    entry.street.append(jittered)
                    added += 1
    log.info("added %d jittered street boxes to %d products", added, len(table))
    return added


def drop_unreadable(table: list[ProductViews], bank: ImageBank) -> list[ProductViews]:
    """Keep only readable images, and products that still have a catalog view."""
    kept = []
    for entry in table:
        entry.views = [r for r in entry.views if r in bank]
        entry.street = [r for r in entry.street if r in bank]
        if entry.views:
            kept.append(entry)
    return kept


class PairSampler:
    """Batches of distinct products: (query, positive) per product, for in-batch contrastive loss.

    The query is a street crop with probability `street_fraction` (else another catalog view);
    the positive is a catalog view. A `same_category_fraction` of each batch comes from one
    category, so the in-batch negatives include hard, same-kind products.
    """

    def __init__(
        self,
        table: list[ProductViews],
        bank: ImageBank,
        transform: Transform,
        street_fraction: float = 0.75,
        same_category_fraction: float = 0.25,
    ) -> None:
        if len(table) < 2:
            raise ValueError(
                f"need at least 2 products with catalog views to train; got {len(table)}"
            )
        self.table, self.bank, self.transform = table, bank, transform
        self.street_fraction = street_fraction
        self.same_category_fraction = same_category_fraction
        self.by_category: dict[str, list[int]] = {}
        for i, entry in enumerate(table):
            self.by_category.setdefault(entry.category, []).append(i)

    def batch(
        self, size: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self._rows(min(size, len(self.table)), rng)
        queries, positives = zip(*(self._pair(self.table[r], rng) for r in rows), strict=True)
        labels = torch.tensor([self.table[r].product for r in rows])
        return torch.stack(queries), torch.stack(positives), labels

    def _rows(self, size: int, rng: np.random.Generator) -> list[int]:
        chosen: list[int] = []
        same = int(size * self.same_category_fraction)
        if same >= 2:
            categories = [c for c, rows in self.by_category.items() if len(rows) >= same]
            if categories:
                category = categories[int(rng.integers(len(categories)))]
                chosen = [
                    int(r) for r in rng.choice(self.by_category[category], same, replace=False)
                ]
        rest = np.setdiff1d(np.arange(len(self.table)), chosen)
        chosen += [int(r) for r in rng.choice(rest, size - len(chosen), replace=False)]
        return chosen

    def _pair(
        self, entry: ProductViews, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positive = entry.views[int(rng.integers(len(entry.views)))]
        use_street = entry.street and (rng.random() < self.street_fraction or len(entry.views) < 2)
        if use_street:
            query = entry.street[int(rng.integers(len(entry.street)))]
        else:
            others = [v for v in entry.views if v != positive] or entry.views
            query = others[int(rng.integers(len(others)))]
        return self.transform(self.bank[query]), self.transform(self.bank[positive])


# --------------------------------------------------------------------------------- triplet files


@dataclass(frozen=True)
class Triplet:
    """One training triplet: a query (with an optional box), a positive, a negative."""

    query: ImageRef
    positive: ImageRef
    negative: ImageRef
    kind: str  # "catalog" or "wild"


class TripletFileError(ValueError):
    """A triplet file line is malformed; the message names the file and line."""


def read_triplets(
    path: Path | str, root: Path | str | None = None, include_pending: bool = False
) -> list[Triplet]:
    """Read a JSONL triplet file, or a review-queue file (suffix .sqlite or .db).

    Each line: {"query": {"image": PATH, "bbox": {left, top, width, height}?},
    "positive": {"image": PATH}, "negative": {"image": PATH}, "kind": "catalog" | "wild"}.
    Image paths are relative to `root` (default: the file's folder). Lines with a "status"
    other than "approved" or "pending" (e.g. "rejected") are skipped. From a review queue only
    approved triplets are read, and pending ones too if `include_pending`.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    if path.suffix.lower() in (".sqlite", ".db"):
        from visnet.triplets.review import queue_lines

        return [_triplet(base, item) for item in queue_lines(path, include_pending)]
    triplets: list[Triplet] = []
    lines = read_jsonl(path)
    while True:
        try:
            lineno, item = next(lines)
        except StopIteration:
            return triplets
        except JsonLinesError as exc:
            raise TripletFileError(str(exc)) from exc
        if item.get("status", "approved") not in ("approved", "pending"):
            continue
        try:
            triplets.append(_triplet(base, item))
        except (KeyError, TypeError, ValueError) as exc:
            raise TripletFileError(f"{path}: line {lineno}: {type(exc).__name__}: {exc}") from exc


def _triplet(base: Path, item: dict[str, Any]) -> Triplet:
    query, positive, negative = (_ref(base, item[r]) for r in ("query", "positive", "negative"))
    return Triplet(query, positive, negative, str(item.get("kind", "catalog")))


def _ref(base: Path, raw: Any) -> ImageRef:
    if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
        raise ValueError("expected an object with an 'image' path")
    box = raw.get("bbox")
    bbox = Box(*(float(box[k]) for k in ("left", "top", "width", "height"))) if box else None
    return ImageRef((base / raw["image"]).resolve(), bbox)


class TripletSampler:
    """Batches of (query, positive, negative) tensors drawn from a list of triplets."""

    def __init__(self, triplets: list[Triplet], bank: ImageBank, transform: Transform) -> None:
        self.triplets = [
            t for t in triplets if t.query in bank and t.positive in bank and t.negative in bank
        ]
        if not self.triplets:
            raise ValueError("no triplet has all three images readable")
        self.bank, self.transform = bank, transform

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        rows = rng.choice(len(self.triplets), min(size, len(self.triplets)), replace=False)
        parts: list[list[torch.Tensor]] = [[], [], []]
        for r in rows:
            t = self.triplets[int(r)]
            for i, ref in enumerate((t.query, t.positive, t.negative)):
                parts[i].append(self.transform(self.bank[ref]))
        return tuple(torch.stack(p) for p in parts)


def wild_triplets(
    table: list[ProductViews], rng: np.random.Generator, negatives: int = 1
) -> list[Triplet]:
    """A Street2Shop set read as wild triplets: q = street crop, p = every catalog view of its
    product, n = `negatives` random catalog views of other products of the same category."""
    by_category: dict[str, list[ImageRef]] = {}
    for entry in table:
        by_category.setdefault(entry.category, []).extend(entry.views)
    triplets = []
    for entry in table:
        pool = [v for v in by_category[entry.category] if v not in entry.views]
        if not pool:
            continue
        for query in entry.street:
            for positive in entry.views:
                for n in rng.choice(len(pool), min(negatives, len(pool)), replace=False):
                    triplets.append(Triplet(query, positive, pool[int(n)], "wild"))
    return triplets
