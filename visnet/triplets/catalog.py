"""Catalog triplets: BISS-fused neighbours give positives (top ranks) and in-class negatives.

For each catalog product q (its first readable view is the query image), candidates are the
views of the *other* products of q's category (q's own views are excluded; colour variants stay,
they are the fine-grained similar items), ordered by fused BISS rank, rank 1 = most similar.

- positive p: a candidate with fused rank in the positive window (paper: 1-200);
- in-class negative n: a candidate with rank in the negative window (paper: 500-1000);
- out-of-class negative n: a random view of a random product of another category.

The in-class share is exact, not drawn per triplet: round(fraction x planned triplets) of the
planned slots, shuffled with the seed, are in-class. A slot falls back to the other kind only
when its own kind is impossible (a single category; a category of two products).

Small categories. The paper's windows need at least 1,000 candidates (the reference size). With
N < 1,000 candidates both windows shrink by N / 1,000: positive 1..max(1, floor(200 N/1000)),
negative max(p_hi + 1, ceil(500 N/1000))..N. So positive ranks are always better than negative
ranks, the positive window is never empty for N >= 1, and the negative window for N >= 2; a
category with N = 1 gets out-of-class negatives only. Scaled categories are logged and listed in
the summary under "scaled_categories".
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visnet.data.street2shop import read_set
from visnet.embed.pipeline import Item, PipelineSettings, embed_items
from visnet.features.base import Embedder
from visnet.triplets.io import image_ref, write_triplets
from visnet.triplets.scorers import FUSION_METHODS, fused_order, get_scorer, parse_weights

log = logging.getLogger(__name__)

__all__ = [
    "CatalogTripletSettings",
    "View",
    "Windows",
    "catalog_views",
    "embed_views",
    "generate_catalog_triplets",
    "rank_windows",
    "write_catalog_triplets",
]


@dataclass(frozen=True)
class CatalogTripletSettings:
    """How catalog triplets are proposed; `scorers` is `spec=weight,...` (see scorers.registry)."""

    scorers: str = "colour=1,texture=1,deep=1"
    per_product: int = 5
    in_class_fraction: float = 0.3
    positive_window: tuple[int, int] = (1, 200)
    negative_window: tuple[int, int] = (500, 1000)
    fusion: str = "mean-rank"
    split: str = "train"  # products with street photos in this split; "all": the whole catalog
    seed: int = 0
    batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        (p_lo, p_hi), (n_lo, n_hi) = self.positive_window, self.negative_window
        if not 1 <= p_lo <= p_hi < n_lo <= n_hi:
            raise ValueError(
                "need 1 <= positive start <= positive end < negative start <= negative end; "
                f"got positive {self.positive_window}, negative {self.negative_window}"
            )
        if not 0.0 <= self.in_class_fraction <= 1.0:
            raise ValueError(f"in_class_fraction must be in [0, 1]; got {self.in_class_fraction}")
        if self.per_product < 1 or self.batch_size < 1:
            raise ValueError(
                f"per_product and batch_size must be >= 1; got {self.per_product}, "
                f"{self.batch_size}"
            )
        if self.fusion not in FUSION_METHODS:
            raise ValueError(f"unknown fusion {self.fusion!r}; known: {', '.join(FUSION_METHODS)}")
        parse_weights(self.scorers)


@dataclass(frozen=True)
class View:
    """One catalog image on disk."""

    photo: int
    product: int
    category: str
    path: Path


@dataclass(frozen=True)
class Windows:
    """1-based inclusive fused-rank windows for one category; `negative` None if impossible."""

    candidates: int
    positive: tuple[int, int]
    negative: tuple[int, int] | None
    scaled: bool


def rank_windows(
    candidates: int, positive: tuple[int, int], negative: tuple[int, int]
) -> Windows | None:
    """The windows for `candidates` ranked items (module docstring); None if there are none."""
    if candidates < 1:
        return None
    scale = min(1.0, candidates / negative[1])
    p_lo = max(1, math.floor(positive[0] * scale))
    p_hi = min(candidates, max(p_lo, math.floor(positive[1] * scale)))
    n_lo = max(p_hi + 1, math.ceil(negative[0] * scale))
    n_hi = min(candidates, max(n_lo, math.floor(negative[1] * scale)))
    neg = (n_lo, n_hi) if n_lo <= n_hi else None
    return Windows(candidates, (p_lo, p_hi), neg, scale < 1.0)


def catalog_views(root: Path | str, split: str = "all") -> list[View]:
    """Every catalog view of the set whose file exists, in the set's order.

    With `split` "train" (or "test"), only products that have street photos in that split: so
    triplets for training never touch the products the test split reports on.
    """
    data = read_set(root)
    keep = None if split == "all" else {p.product for p in data.pairs.get(split, [])}
    if keep is not None and not keep:
        raise ValueError(f"{root}: split {split!r} has no products; use --split all")
    views = []
    for shop in data.shop:
        if keep is not None and shop.product not in keep:
            continue
        path = data.photo_path(shop.photo)
        if path is None:
            log.warning(
                "catalog photo %d (product %d) is missing; skipped", shop.photo, shop.product
            )
            continue
        views.append(View(shop.photo, shop.product, shop.category, path))
    return views


def embed_views(
    views: list[View], scorers: dict[str, Embedder], batch_size: int = 64, progress: bool = True
) -> tuple[dict[str, np.ndarray], list[int], list[tuple[int, str]]]:
    """Every scorer over the views, through the embedding pipeline (one decode per image).

    Returns ({spec: (kept, d) vectors}, indices of the kept views, [(photo, reason)] skipped).
    """
    items = [Item(i, view.path) for i, view in enumerate(views)]
    settings = PipelineSettings(batch_size=batch_size, progress=progress, desc="score catalog")
    done = embed_items(items, scorers, settings)
    kept = [int(key) for key in done.keys]
    skipped = [(views[int(s.key)].photo, s.detail or s.reason) for s in done.skipped]
    return done.vectors, kept, skipped


def generate_catalog_triplets(
    root: Path | str, settings: CatalogTripletSettings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Propose catalog triplets for the set at `root`. Returns (JSONL lines, summary)."""
    root = Path(root)
    weights = {spec: w for spec, w in parse_weights(settings.scorers).items() if w > 0}
    scorers = {spec: get_scorer(spec) for spec in weights}
    started = time.perf_counter()
    all_views = catalog_views(root, settings.split)
    vectors, kept, skipped = embed_views(all_views, scorers, settings.batch_size, settings.progress)
    views = [all_views[i] for i in kept]
    embed_s = time.perf_counter() - started
    sampler = _Sampler(root, views, vectors, weights, settings)
    lines = sampler.run()
    summary = {
        **sampler.summary(),
        "views": len(views),
        "skipped_images": [{"photo": p, "reason": r} for p, r in skipped],
        "scorers": weights,
        "settings": asdict(settings),
        "seconds": {"embed": round(embed_s, 3), "rank_and_sample": round(sampler.seconds, 3)},
    }
    return lines, summary


def write_catalog_triplets(
    root: Path | str, out: Path | str, settings: CatalogTripletSettings
) -> dict[str, Any]:
    """The stage: propose catalog triplets and write them to `out` (JSONL). Returns the summary."""
    lines, summary = generate_catalog_triplets(root, settings)
    summary["written"] = write_triplets(lines, out)
    summary["out"] = str(out)
    return summary


class _Sampler:
    """Per category: fused orders for the query views, then window and out-of-class draws."""

    def __init__(
        self,
        root: Path,
        views: list[View],
        vectors: dict[str, np.ndarray],
        weights: dict[str, float],
        settings: CatalogTripletSettings,
    ) -> None:
        self.root, self.views, self.vectors = root, views, vectors
        self.weights, self.settings = weights, settings
        self.rng = np.random.default_rng(settings.seed)
        self.products = np.array([v.product for v in views], dtype=np.int64)
        self.categories = np.array([v.category for v in views])
        self.windows: dict[str, Windows] = {}
        self.counts = {"in-class": 0, "out-of-class": 0, "products_without_candidates": 0}
        self.seconds = 0.0
        self.plan, self.drawn = np.zeros(0, dtype=bool), 0

    def _plan_kinds(self) -> np.ndarray:
        """In-class (True) or out-of-class for each planned triplet: an exact share, shuffled."""
        total = len(np.unique(self.products)) * self.settings.per_product
        in_class = round(total * self.settings.in_class_fraction)
        return self.rng.permutation(total) < in_class

    def run(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        self.plan, self.drawn = self._plan_kinds(), 0
        started = time.perf_counter()
        names = sorted(set(self.categories.tolist()))
        bar = tqdm(
            total=len(set(self.products.tolist())),
            desc="sample triplets",
            unit="product",
            disable=not self.settings.progress,
        )
        for category in names:
            lines.extend(self._category(category, bar))
        bar.close()
        self.seconds = time.perf_counter() - started
        return lines

    def _category(self, category: str, bar: Any) -> list[dict[str, Any]]:
        rows = np.flatnonzero(self.categories == category)
        products = self.products[rows]
        ids, first, per_product = np.unique(products, return_index=True, return_counts=True)
        windows = rank_windows(
            len(rows) - int(per_product.max()),
            self.settings.positive_window,
            self.settings.negative_window,
        )
        local = {name: self.vectors[name][rows] for name in self.weights}
        order = fused_order(local, self.weights, first, self.settings.fusion)
        others = np.unique(self.products[self.categories != category])
        self._note_windows(category, windows)
        lines = []
        for product, query, ranked in zip(ids.tolist(), first.tolist(), order, strict=True):
            bar.update(1)
            if windows is None:
                self.counts["products_without_candidates"] += 1
                continue
            candidates = rows[ranked[products[ranked] != product]]
            lines.extend(self._product(int(rows[query]), candidates, windows, others))
        return lines

    def _note_windows(self, category: str, windows: Windows | None) -> None:
        if windows is None:
            log.warning("category %s has a single product: no catalog triplets from it", category)
            return
        self.windows[category] = windows
        if windows.scaled:
            log.info(
                "category %s: %d candidates < %d, rank windows scaled to positive %d-%d, "
                "in-class negative %s",
                category,
                windows.candidates,
                self.settings.negative_window[1],
                *windows.positive,
                "-".join(map(str, windows.negative or ())) or "none",
            )

    def _product(
        self, query: int, candidates: np.ndarray, windows: Windows, others: np.ndarray
    ) -> list[dict[str, Any]]:
        p_lo, p_hi = windows.positive
        count = self.settings.per_product
        ranks = self.rng.choice(np.arange(p_lo, p_hi + 1), count, replace=count > p_hi - p_lo + 1)
        lines = []
        for rank in ranks.tolist():
            positive = int(candidates[rank - 1])
            negative, negative_rank = self._negative(candidates, windows, others, positive)
            if negative is None:
                continue
            lines.append(self._line(query, positive, rank, negative, negative_rank))
        return lines

    def _negative(
        self, candidates: np.ndarray, windows: Windows, others: np.ndarray, positive: int
    ) -> tuple[int | None, int | None]:
        """(view index, fused rank or None for out-of-class); (None, None) if neither is possible.

        An in-class draw skips views of the positive's product (p and n must differ).
        """
        in_class = bool(self.plan[self.drawn])
        self.drawn += 1
        if windows.negative is not None and (in_class or len(others) == 0):
            n_lo, n_hi = windows.negative
            ranks = np.arange(n_lo, n_hi + 1)
            ranks = ranks[self.products[candidates[ranks - 1]] != self.products[positive]]
            if len(ranks):
                rank = int(ranks[int(self.rng.integers(len(ranks)))])
                return int(candidates[rank - 1]), rank
        if len(others) == 0:
            return None, None
        product = others[int(self.rng.integers(len(others)))]
        views = np.flatnonzero(self.products == product)
        return int(views[int(self.rng.integers(len(views)))]), None

    def _line(
        self, query: int, positive: int, p_rank: int, negative: int, n_rank: int | None
    ) -> dict[str, Any]:
        q, p, n = self.views[query], self.views[positive], self.views[negative]
        kind = "in-class" if n_rank is not None else "out-of-class"
        self.counts[kind] += 1
        return {
            "query": image_ref(self.root, q.path),
            "positive": image_ref(self.root, p.path),
            "negative": image_ref(self.root, n.path),
            "kind": "catalog",
            "status": "pending",
            "category": q.category,
            "query_product": q.product,
            "positive_product": p.product,
            "negative_product": n.product,
            "negative_category": n.category,
            "positive_rank": p_rank,
            "negative_rank": n_rank,
            "negative_kind": kind,
        }

    def summary(self) -> dict[str, Any]:
        total = self.counts["in-class"] + self.counts["out-of-class"]
        return {
            "triplets": total,
            **self.counts,
            "in_class_share": round(self.counts["in-class"] / total, 4) if total else None,
            "windows": {c: _windows_json(w) for c, w in sorted(self.windows.items())},
            "scaled_categories": {
                c: _windows_json(w) for c, w in sorted(self.windows.items()) if w.scaled
            },
        }


def _windows_json(w: Windows) -> dict[str, Any]:
    negative = list(w.negative) if w.negative else None
    return {"candidates": w.candidates, "positive": list(w.positive), "negative": negative}
