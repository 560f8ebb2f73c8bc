"""Near-duplicate listings: products that show the same picture, collapsed into one result.

A re-listing, or another seller's copy of a product, shows the same picture under another id:
re-encoded, rescaled or slightly re-cropped. Two products are such listings of one picture when
their *listing similarity* (the best cosine over their pairs of views, in the index's vectors)
reaches the threshold; a result list shows the best-ranked of them once and names the others.
Colour variants of one product are different products and stay apart: the default threshold
was chosen on the demo catalog between the two (`benchmarks/near_duplicates.py`, whose table
its docstring keeps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DUPLICATE_THRESHOLD",
    "Group",
    "collapse",
    "listing_similarity",
    "pairwise_similarity",
]

# Listing similarity from which two products are one picture listed twice: the lowest at which
# at most 1 colour-variant pair in 200 of the demo catalog collapses, where 94% of re-listings
# (re-encoded, rescaled, re-cropped copies of its images) do. Measured for the default model
# (models/visnet-default.pt, 512-D) by benchmarks/near_duplicates.py, whose docstring keeps the
# table; another model needs its own measurement.
DUPLICATE_THRESHOLD = 0.97


def pairwise_similarity(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Listing similarity of every product in ``a`` with every product in ``b``: (len a, len b).

    Each product is its views as unit rows (views, d); the similarity of two products is the
    best cosine over their pairs of views, so a product that shares one picture with another
    matches it however many other views either has.
    """
    return _similarity(_stack(a), _stack(b))


_Stacked = tuple[np.ndarray, np.ndarray | None]  # all views as rows; each product's first row


def _stack(products: Sequence[np.ndarray]) -> _Stacked:
    """The products' views as one matrix, and the row each product starts at (None when every
    product has one view, the common case, which then needs no reduction)."""
    if not len(products):
        return np.zeros((0, 0), np.float32), None
    rows = products[0] if len(products) == 1 else np.concatenate(list(products))
    if all(len(v) == 1 for v in products):
        return rows, None
    return rows, np.cumsum([0, *(len(v) for v in products[:-1])])


def _similarity(a: _Stacked, b: _Stacked) -> np.ndarray:
    """`pairwise_similarity` of two stacked product lists."""
    (rows, starts_a), (cols, starts_b) = a, b
    count_a = len(rows) if starts_a is None else len(starts_a)
    count_b = len(cols) if starts_b is None else len(starts_b)
    if not count_a or not count_b:
        return np.zeros((count_a, count_b), np.float32)
    views = rows @ cols.T
    if starts_a is not None:
        views = np.maximum.reduceat(views, starts_a, axis=0)
    if starts_b is not None:
        views = np.maximum.reduceat(views, starts_b, axis=1)
    return views


def listing_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The listing similarity of two products given as their views' unit rows (views, d)."""
    return float(pairwise_similarity([a], [b])[0, 0])


@dataclass
class Group:
    """One result: the best-ranked listing of a picture, and the other products listing it."""

    product_id: str
    score: float
    duplicates: list[str] = field(default_factory=list)


def collapse(
    ranked: Sequence[tuple[str, float]],
    views: Mapping[str, np.ndarray],
    threshold: float | None,
    k: int,
    seed: np.ndarray | None = None,
    block: int = 512,
) -> tuple[list[Group], list[str]]:
    """Up to ``k`` results from products ranked best first, near-duplicates collapsed.

    Walking the ranking, a product whose listing similarity to an earlier result reaches
    ``threshold`` joins that result's ``duplicates`` (the best-ranked such result), else it
    starts a result while fewer than ``k`` exist. ``seed``: the views of the product whose
    look-alikes these are; products that are listings of it are left out and returned second.
    ``threshold`` None collapses nothing (then ``views`` may be empty). The similarities are
    computed ``block`` products at a time, against the results so far and within the block.
    """
    if threshold is None:
        return [Group(pid, score) for pid, score in ranked[:k]], []
    groups: list[Group] = []
    kept: list[np.ndarray] = []  # the views of each group's product, in group order
    own: list[str] = []
    for start in range(0, len(ranked), block):
        chunk = ranked[start : start + block]
        mine = [views[pid] for pid, _ in chunk]
        stacked = _stack(mine)  # once for the three comparisons
        earlier: np.ndarray = _similarity(stacked, _stack(kept)) >= threshold  # past blocks'
        within: np.ndarray = _similarity(stacked, stacked) >= threshold
        listing: np.ndarray = (
            _similarity(stacked, _stack([seed]))[:, 0] >= threshold
            if seed is not None
            else np.zeros(len(chunk), bool)
        )
        alone = np.logical_not(earlier.any(axis=1) | np.tril(within, -1).any(axis=1))  # none before
        first, started = len(groups), list[int]()  # groups this block started: their rows in it
        for i, (product_id, score) in enumerate(chunk):
            if listing[i]:
                own.append(product_id)
                continue
            match = None if alone[i] else _first_alike(earlier[i], within[i], started, first)
            if match is not None:
                groups[match].duplicates.append(product_id)
            elif len(groups) < k:
                groups.append(Group(product_id, score))
                kept.append(mine[i])
                started.append(i)
    return groups, own


def _first_alike(
    earlier: np.ndarray, within: np.ndarray, started: list[int], first: int
) -> int | None:
    """The best-ranked group a product is alike: one of a past block (``earlier``, by group),
    else one this block started (``within``, by row; group ``first`` on)."""
    before = np.flatnonzero(earlier)
    if len(before):
        return int(before[0])
    return next((first + g for g, row in enumerate(started) if within[row]), None)
