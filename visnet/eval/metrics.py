"""Pure retrieval metrics over ranked product lists: recall@k, precision@k, AP and mAP."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import TypeVar

__all__ = [
    "average_precision",
    "dedupe_products",
    "mean_average_precision",
    "precision_at_k",
    "recall_at_k",
]

T = TypeVar("T", bound=Hashable)


def dedupe_products(ranked_photo_products: Iterable[T], limit: int | None = None) -> list[T]:
    """Map a ranking of photos (given as their products) to products: first occurrence wins.

    >>> dedupe_products([7, 3, 7, 5, 3])
    [7, 3, 5]
    """
    seen: set[T] = set()
    products: list[T] = []
    for product in ranked_photo_products:
        if product in seen:
            continue
        seen.add(product)
        products.append(product)
        if limit is not None and len(products) >= limit:
            break
    return products


def _check(ranked: Sequence[Sequence[T]], truth: Sequence[T], ks: Iterable[int]) -> list[int]:
    if len(ranked) != len(truth):
        raise ValueError(f"got {len(ranked)} rankings but {len(truth)} true products")
    if not ranked:
        raise ValueError("no queries to score; every query was skipped or the split is empty")
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers; got {ks}")
    return ks


def recall_at_k(
    ranked_products: Sequence[Sequence[T]], truth: Sequence[T], ks: Iterable[int] = (1, 5, 10, 20)
) -> dict[int, float]:
    """Fraction of queries whose true product is among their first k products, for each k."""
    ks = _check(ranked_products, truth, ks)
    hits = {k: 0 for k in ks}
    for ranking, product in zip(ranked_products, truth, strict=True):
        for k in ks:
            hits[k] += product in ranking[:k]
    return {k: hits[k] / len(truth) for k in ks}


def precision_at_k(
    ranked_products: Sequence[Sequence[T]], truth: Sequence[T], ks: Iterable[int] = (1, 5, 10, 20)
) -> dict[int, float]:
    """Mean over queries of (true products in the first k) / k; one true product per query."""
    ks = _check(ranked_products, truth, ks)
    totals = {k: 0.0 for k in ks}
    for ranking, product in zip(ranked_products, truth, strict=True):
        for k in ks:
            totals[k] += sum(1 for p in ranking[:k] if p == product) / k
    return {k: totals[k] / len(truth) for k in ks}


def average_precision(ranking: Sequence[T], relevant: Collection[T] | T) -> float:
    """AP of one ranking (deduped first): mean precision at each relevant item's rank, missing = 0.

    `relevant` is one item or a collection of them; the denominator is how many are relevant.
    """
    targets = set(relevant) if _is_collection(relevant) else {relevant}  # type: ignore[arg-type]
    if not targets:
        raise ValueError("average_precision needs at least one relevant item")
    found, total = 0, 0.0
    for rank, item in enumerate(dedupe_products(ranking), start=1):
        if item in targets:
            found += 1
            total += found / rank
    return total / len(targets)


def mean_average_precision(
    rankings: Sequence[Sequence[T]], relevant: Sequence[Collection[T] | T]
) -> float:
    """Mean of `average_precision` over queries."""
    if len(rankings) != len(relevant):
        raise ValueError(f"got {len(rankings)} rankings but {len(relevant)} relevant sets")
    if not rankings:
        raise ValueError("no queries to score")
    return sum(average_precision(r, t) for r, t in zip(rankings, relevant, strict=True)) / len(
        rankings
    )


def _is_collection(value: object) -> bool:
    return isinstance(value, Collection) and not isinstance(value, str | bytes)
