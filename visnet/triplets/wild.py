"""Wild (street-to-shop) triplets: q = a street box, p = each view of its product, n = random.

For every street pair of a split: the query is the street photo cropped by its box; every
catalog view of the matching product is a positive; for each positive, `negatives` catalog views
of *other* products of the same category are drawn at random (without replacement; the paper drew
100 per positive). Only file existence is checked here; the trainer skips undecodable images.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visnet.data.street2shop import SPLITS, StreetPair, read_set
from visnet.triplets.catalog import View, catalog_views
from visnet.triplets.io import image_ref, write_triplets

log = logging.getLogger(__name__)

__all__ = ["WildTripletSettings", "generate_wild_triplets", "write_wild_triplets"]


@dataclass(frozen=True)
class WildTripletSettings:
    """How wild triplets are drawn."""

    negatives: int = 10
    split: str = "train"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1; got {self.negatives}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; splits: {', '.join(SPLITS)}")


def generate_wild_triplets(
    root: Path | str, settings: WildTripletSettings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Wild triplets for the street pairs of `settings.split`. Returns (JSONL lines, summary)."""
    root = Path(root)
    data = read_set(root)
    views = catalog_views(root)
    by_product: dict[int, list[View]] = defaultdict(list)
    by_category: dict[str, list[View]] = defaultdict(list)
    for view in views:
        by_product[view.product].append(view)
        by_category[view.category].append(view)
    rng = np.random.default_rng(settings.seed)
    counts = {"pairs": 0, "missing_street_photo": 0, "no_catalog_view": 0, "no_negative": 0}
    lines: list[dict[str, Any]] = []
    pairs = data.pairs.get(settings.split, [])
    for pair in tqdm(pairs, desc="wild triplets", unit="pair", disable=not settings.progress):
        street = data.photo_path(pair.photo)
        positives = by_product.get(pair.product, [])
        pool = [v for v in by_category.get(pair.category, []) if v.product != pair.product]
        problem = _problem(street, positives, pool)
        if problem:
            counts[problem] += 1
            continue
        counts["pairs"] += 1
        query = image_ref(root, street, pair.bbox)  # type: ignore[arg-type]
        lines.extend(_pair_lines(root, pair, query, positives, pool, settings.negatives, rng))
    _log_skips(counts)
    summary = {"triplets": len(lines), **counts, "settings": asdict(settings)}
    return lines, summary


def write_wild_triplets(
    root: Path | str, out: Path | str, settings: WildTripletSettings
) -> dict[str, Any]:
    """The stage: draw wild triplets and write them to `out` (JSONL). Returns the summary."""
    lines, summary = generate_wild_triplets(root, settings)
    summary["written"] = write_triplets(lines, out)
    summary["out"] = str(out)
    return summary


def _problem(street: Path | None, positives: list[View], pool: list[View]) -> str | None:
    if street is None:
        return "missing_street_photo"
    if not positives:
        return "no_catalog_view"
    if not pool:
        return "no_negative"
    return None


def _pair_lines(
    root: Path,
    pair: StreetPair,
    query: dict[str, Any],
    positives: list[View],
    pool: list[View],
    negatives: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    lines = []
    for positive in positives:
        for n in rng.choice(len(pool), min(negatives, len(pool)), replace=False).tolist():
            negative = pool[n]
            lines.append(
                {
                    "query": query,
                    "positive": image_ref(root, positive.path),
                    "negative": image_ref(root, negative.path),
                    "kind": "wild",
                    "status": "pending",
                    "category": pair.category,
                    "street_photo": pair.photo,
                    "query_product": pair.product,
                    "positive_product": positive.product,
                    "negative_product": negative.product,
                }
            )
    return lines


def _log_skips(counts: dict[str, int]) -> None:
    for reason in ("missing_street_photo", "no_catalog_view", "no_negative"):
        if counts[reason]:
            log.warning("skipped %d street pairs: %s", counts[reason], reason.replace("_", " "))
