"""Feedback triplets: a clicked result is the positive, results skipped above it the negatives.

The skip-above rule (Joachims, 2002): a shopper who clicks position p has looked at the results
above it and passed them over, so each unclicked result above p is taken as less wanted than
the clicked one for that query. Results below p say nothing (maybe never seen), and a click at
the top, or below only clicked results, gives no triplet. At most `negatives` skipped results a
click are used, the best-ranked first (the model's surest mistakes).

The query image is the anchor product's first view for a "more like this" list, and the stored
crop (`visnet.feedback.queries`) for a search; a search whose crop was not kept, or a product no
longer in the index or without a readable image, is skipped and counted. Product images are
found as the service finds them: refs under the catalog root that the index's `build.json`
records, uploads under the index folder (`visnet.index.refs`).

The triplets go to the review queue the BISS triplets use (kind "feedback", pending), in the
trainer's line format (`visnet.triplets.io`), so people approve them before `visnet train
--triplets QUEUE` learns from them. The same triplet from several lists is one line, with the
number of lists that gave it; paths are relative to the queue's data root where they lie under
it (else absolute).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visnet.feedback.event_log import EventLog, ShownList
from visnet.feedback.queries import query_crop_path
from visnet.index.products import ProductStore, UnknownProductError
from visnet.index.refs import product_image, recorded_catalog_root
from visnet.triplets.io import image_ref, triplet_key
from visnet.triplets.review import ReviewQueue

log = logging.getLogger(__name__)

__all__ = [
    "FeedbackTripletSettings",
    "IndexImages",
    "feedback_triplets",
    "queue_feedback_triplets",
]

KIND = "feedback"
PRODUCTS_FILE = "products.sqlite"  # `visnet.index.catalog_index.CatalogIndex` layout


@dataclass(frozen=True)
class FeedbackTripletSettings:
    """How triplets are drawn from the log."""

    negatives: int = 10  # skipped results above a click used as negatives, best-ranked first

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1; got {self.negatives}")


class IndexImages:
    """An index folder's product images and stored query crops, as files (read only)."""

    def __init__(self, index_dir: Path | str, catalog_root: Path | str | None = None) -> None:
        self.index_dir = Path(index_dir)
        if not (self.index_dir / PRODUCTS_FILE).is_file():
            raise FileNotFoundError(f"{self.index_dir}: not an index folder (no {PRODUCTS_FILE})")
        root = Path(catalog_root) if catalog_root else recorded_catalog_root(self.index_dir)
        self.catalog_root = root
        self.products = ProductStore(self.index_dir / PRODUCTS_FILE)
        self._found: dict[str, tuple[Path, str] | None] = {}

    def product(self, product_id: str) -> tuple[Path, str] | None:
        """(first readable view, category) of a product; None if it is gone or unreadable."""
        if product_id not in self._found:
            self._found[product_id] = self._lookup(product_id)
        return self._found[product_id]

    def _lookup(self, product_id: str) -> tuple[Path, str] | None:
        try:
            item = self.products.get(product_id)
        except UnknownProductError:
            return None
        for ref in item.images:
            path = product_image(ref, self.catalog_root, self.index_dir)
            if path is not None:
                return path, item.category
        return None

    def query(self, crop: str | None) -> Path | None:
        """The stored crop of a search; None if none was kept (or it was pruned)."""
        if crop is None:
            return None
        path = query_crop_path(self.index_dir, crop)
        return path if path.is_file() else None

    def close(self) -> None:
        self.products.close()


def feedback_triplets(
    events: EventLog, images: IndexImages, root: Path, settings: FeedbackTripletSettings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Triplet lines from every clicked list of the log (module docstring), and a summary."""
    counts = dict.fromkeys(
        ("lists", "clicked_lists", "clicks", "clicks_without_skips", "missing_query_image"), 0
    )
    counts["missing_product_image"] = 0
    found: dict[str, dict[str, Any]] = {}
    for shown in events.shown_lists():
        counts["lists"] += 1
        if not shown.clicked:
            continue
        counts["clicked_lists"] += 1
        counts["clicks"] += len(shown.clicked)
        query = _query(shown, images)
        if query is None:
            counts["missing_query_image"] += 1
            continue
        for line in _list_lines(shown, query, images, root, settings, counts):
            key = triplet_key(line)
            if key in found:
                found[key]["lists"] += 1
            else:
                found[key] = line
    lines = list(found.values())
    summary = {"triplets": len(lines), **counts, "settings": asdict(settings)}
    return lines, summary


def _query(shown: ShownList, images: IndexImages) -> Path | None:
    if shown.query_kind == "similar":
        anchor = images.product(shown.anchor) if shown.anchor else None
        return anchor[0] if anchor else None
    return images.query(shown.query_image)


def _list_lines(
    shown: ShownList,
    query: Path,
    images: IndexImages,
    root: Path,
    settings: FeedbackTripletSettings,
    counts: dict[str, int],
) -> list[dict[str, Any]]:
    lines = []
    for position, product in shown.shown:
        if position not in shown.clicked:
            continue
        skipped = [
            (p, other) for p, other in shown.shown if p < position and p not in shown.clicked
        ]
        if not skipped:
            counts["clicks_without_skips"] += 1
            continue
        positive = images.product(product)
        if positive is None:
            counts["missing_product_image"] += 1
            continue
        for p, other in skipped[: settings.negatives]:
            negative = images.product(other)
            if negative is None:
                counts["missing_product_image"] += 1
                continue
            sides = {"query": query, "positive": positive[0], "negative": negative[0]}
            refs = {role: image_ref(root, path) for role, path in sides.items()}
            lines.append(_line(shown, refs, positive[1], (position, product), (p, other)))
    return lines


def _line(
    shown: ShownList,
    refs: dict[str, dict[str, Any]],
    category: str,
    positive: tuple[int, str],
    negative: tuple[int, str],
) -> dict[str, Any]:
    return {
        **refs,
        "kind": KIND,
        "status": "pending",
        "category": category,
        "query_kind": shown.query_kind,
        **({"query_product": shown.anchor} if shown.anchor else {}),
        **({"query_image": shown.query_image} if shown.query_image else {}),
        "positive_product": positive[1],
        "negative_product": negative[1],
        "positive_position": positive[0],
        "negative_position": negative[0],
        "model": shown.model,
        "lists": 1,
    }


def queue_feedback_triplets(
    events: Path | str,
    index_dir: Path | str,
    queue: Path | str,
    root: Path | str | None = None,
    settings: FeedbackTripletSettings | None = None,
    catalog_root: Path | str | None = None,
) -> dict[str, Any]:
    """The stage behind `visnet triplets feedback`: triplets from the log into the review queue.

    `events`: the log (the service keeps it as INDEX/events.sqlite); `root`: the data root the
    image paths are written relative to (default: the queue's, else the index's catalog root).
    Returns the summary with the queue's answer (`added`, `already_queued`).
    """
    settings = settings or FeedbackTripletSettings()
    images = IndexImages(index_dir, catalog_root)
    try:
        with EventLog(events, create=False) as event_log, ReviewQueue(queue) as q:
            base = Path(root) if root else q.root or images.catalog_root or images.index_dir
            lines, summary = feedback_triplets(event_log, images, base, settings)
            added = q.add(lines, root=None if q.root else base)
            summary.update(added, queue=str(queue), root=str(base), counts=q.counts())
    finally:
        images.close()
    log.info("feedback triplets: %s", {k: summary[k] for k in ("triplets", "added", "clicks")})
    return summary
