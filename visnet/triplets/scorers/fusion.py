"""Rank fusion of BISS scorers within a category: per-scorer inner-product ranks -> one order.

Each scorer ranks the items of a category for a query by inner product of unit vectors (rank 0
= most similar; ties share the better rank, so a coarse scorer such as pHash adds no index-order
noise). The ranks, not the scores, are fused: scores of different scorers live on different
scales, ranks do not. Two rules:

- `mean-rank` (default): the weighted mean of the ranks, sum(w_s * r_s) / sum(w_s). It treats the
  whole list alike, which the in-class negative window (mid ranks 500-1000) needs: an item there
  is moderately unlike the query under every scorer, not far under one and near under another.
- `rrf`: weighted reciprocal-rank fusion, sum(w_s / (k + r_s + 1)) with k = 60 (Cormack et al.,
  2009). It rewards strong evidence from one scorer near the top, but flattens the tail.

A weight of 0 removes a scorer exactly. Work is chunked over query rows so memory stays at
(chunk x category size) per scorer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["FUSION_METHODS", "RRF_K", "fuse_ranks", "fused_order", "similarity_ranks"]

FUSION_METHODS = ("mean-rank", "rrf")
RRF_K = 60.0
CHUNK = 512


def similarity_ranks(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(q, m) int32: rank of every item for every query by inner product, 0 = best; ties share."""
    sims = np.asarray(queries, dtype=np.float32) @ np.asarray(items, dtype=np.float32).T
    order = np.argsort(-sims, axis=1, kind="stable")
    ordered = np.take_along_axis(sims, order, axis=1)
    positions = np.broadcast_to(np.arange(sims.shape[1], dtype=np.int32), sims.shape)
    starts = np.ones(sims.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    shared = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    ranks = np.empty(sims.shape, dtype=np.int32)
    np.put_along_axis(ranks, order, shared, axis=1)
    return ranks


def fuse_ranks(
    ranks: Mapping[str, np.ndarray], weights: Mapping[str, float], method: str = "mean-rank"
) -> np.ndarray:
    """Fused cost (q, m) from per-scorer ranks: lower is more similar."""
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}; known: {', '.join(FUSION_METHODS)}")
    used = {name: float(w) for name, w in weights.items() if w > 0}
    if not used:
        raise ValueError(f"need at least one scorer with a positive weight; got {dict(weights)}")
    missing = sorted(set(used) - set(ranks))
    if missing:
        raise ValueError(f"no ranks for weighted scorers {missing}; have {sorted(ranks)}")
    first = ranks[next(iter(used))]
    cost = np.zeros(first.shape, dtype=np.float64)
    for name, weight in used.items():
        rank = ranks[name].astype(np.float64)
        cost += weight * rank if method == "mean-rank" else -weight / (RRF_K + rank + 1.0)
    return cost / sum(used.values())


def fused_order(
    vectors: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    queries: Sequence[int] | np.ndarray,
    method: str = "mean-rank",
    chunk: int = CHUNK,
) -> np.ndarray:
    """(len(queries), m) item indices, most similar first, for query rows of the item matrices.

    `vectors[name]` is (m, d_name) unit rows of the same m items; a scorer with weight 0 (or
    none) is never touched. Ties in the fused cost keep item order (stable sort).
    """
    used = [name for name, w in weights.items() if w > 0]
    missing = sorted(set(used) - set(vectors))
    if missing:
        raise ValueError(f"no vectors for weighted scorers {missing}; have {sorted(vectors)}")
    sizes = {vectors[name].shape[0] for name in used}
    if len(sizes) > 1:
        raise ValueError(f"scorer matrices disagree on the number of items: {sorted(sizes)}")
    rows = np.asarray(queries, dtype=np.int64)
    size = sizes.pop() if sizes else 0
    out = np.empty((len(rows), size), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        ranks = {name: similarity_ranks(vectors[name][part], vectors[name]) for name in used}
        cost = fuse_ranks(ranks, weights, method)
        out[start : start + len(part)] = np.argsort(cost, axis=1, kind="stable")
    return out
