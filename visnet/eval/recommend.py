"""Recommendation quality over the catalog: same-category neighbours, other views, colour variants.

Each product is queried by its first view against every catalog image; image scores become product
scores by taking the best view (what `dedupe_products` does to a ranking), and the query image
itself is left out.

- `same_category@10`: share of the 10 nearest other products that are in the query's category.
- `other_view_recall@1`, `other_view_mean_rank`: where the product's own other views rank among
  products (rank 1 = before every other product); products with a single view are not asked.
- `variant_auc`: for a product with a colour variant (DATA/catalog.jsonl `attributes.variant_of`),
  the share of unrelated products of its category ranked below its best variant (ties half).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visnet.data.catalog import read_side_info, side_attribute

log = logging.getLogger(__name__)

__all__ = ["read_variants", "recommendation_quality"]

CHUNK = 256


def read_variants(path: Path | str) -> dict[int, str] | None:
    """Product id -> variant group (its `variant_of`, else itself); None without any variant."""
    info = read_side_info(path)
    bases = side_attribute(info, "variant_of")
    groups = {int(p): bases.get(int(p), p) for p in info if p.isdigit()}
    return groups if bases else None


def recommendation_quality(
    vectors: np.ndarray,
    products: Sequence[int],
    categories: Sequence[str],
    variants: Mapping[int, str] | None = None,
    k: int = 10,
    max_queries: int | None = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The three recommendation measures for catalog image vectors (row i shows products[i])."""
    ids, column_of = np.unique(np.asarray(products), return_inverse=True)
    if len(ids) < 2:
        return {"products": len(ids), "note": "fewer than two readable catalog products"}
    order = np.argsort(column_of, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(column_of[order]) != 0])
    query_rows = order[starts]  # first catalog row of each product
    cat_names, product_cat = np.unique(np.asarray(categories)[query_rows], return_inverse=True)
    groups = _group_array(ids, variants)
    chosen = _sample(len(ids), max_queries, seed)
    parts = [
        _score_chunk(vectors, order, starts, query_rows, chunk, product_cat, groups, k)
        for chunk in np.array_split(chosen, max(1, int(np.ceil(len(chosen) / CHUNK))))
    ]
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return _summarise(merged, len(ids), variants is not None, len(cat_names), k)


def _group_array(ids: np.ndarray, variants: Mapping[int, str] | None) -> np.ndarray:
    if variants is None:
        return np.arange(len(ids))
    names = [variants.get(int(p), f"own:{int(p)}") for p in ids]
    return np.unique(np.asarray(names), return_inverse=True)[1]


def _sample(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _product_scores(
    vectors: np.ndarray, order: np.ndarray, starts: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """(len(rows), products) best-view scores, with each query image itself left out."""
    scores = vectors[rows] @ vectors.T
    scores[np.arange(len(rows)), rows] = -np.inf
    return np.maximum.reduceat(scores[:, order], starts, axis=1)


def _score_chunk(
    vectors: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    query_rows: np.ndarray,
    chunk: np.ndarray,
    product_cat: np.ndarray,
    groups: np.ndarray,
    k: int,
) -> dict[str, np.ndarray]:
    scores = _product_scores(vectors, order, starts, query_rows[chunk])
    at = np.arange(len(chunk))
    own = scores[at, chunk].copy()
    scores[at, chunk] = -np.inf  # the query product is never its own neighbour
    depth = min(k, scores.shape[1] - 1)
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    same_cat = (product_cat[top] == product_cat[chunk][:, None]).mean(axis=1)
    has_view = np.isfinite(own)
    view_rank = 1 + (scores > own[:, None]).sum(axis=1)
    return {
        "same_category": same_cat,
        "view_rank": view_rank[has_view],
        **_variant_auc(scores, chunk, product_cat, groups),
    }


def _variant_auc(
    scores: np.ndarray, chunk: np.ndarray, product_cat: np.ndarray, groups: np.ndarray
) -> dict[str, np.ndarray]:
    same_group = groups[None, :] == groups[chunk][:, None]
    same_group[np.arange(len(chunk)), chunk] = False
    best = np.where(same_group, scores, -np.inf).max(axis=1)
    unrelated = (product_cat[None, :] == product_cat[chunk][:, None]) & (
        groups[None, :] != groups[chunk][:, None]
    )
    below = ((scores < best[:, None]) & unrelated).sum(axis=1)
    ties = ((scores == best[:, None]) & unrelated).sum(axis=1)
    valid = same_group.any(axis=1) & unrelated.any(axis=1)
    auc = (below + 0.5 * ties)[valid] / unrelated.sum(axis=1)[valid]
    return {"variant_auc": auc}


def _summarise(
    m: dict[str, np.ndarray], products: int, with_variants: bool, cats: int, k: int
) -> dict:
    ranks = m["view_rank"]
    result: dict[str, Any] = {
        "products": products,
        "queries": int(len(m["same_category"])),
        f"same_category@{k}": _mean(m["same_category"]),
        "other_view_queries": int(len(ranks)),
        "other_view_recall@1": _mean(ranks == 1),
        "other_view_mean_rank": _mean(ranks, digits=2),
        "variant_queries": int(len(m["variant_auc"])),
        "variant_auc": _mean(m["variant_auc"]) if with_variants else None,
    }
    if cats < 2:
        result["note"] = f"one category only: same_category@{k} is trivially 1"
    if not with_variants:
        result["variant_note"] = "no catalog.jsonl with attributes.variant_of; variant_auc skipped"
    return result


def _mean(values: np.ndarray, digits: int = 4) -> float | None:
    return round(float(np.mean(values)), digits) if len(values) else None
