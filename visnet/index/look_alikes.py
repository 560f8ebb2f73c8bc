"""Ranking a catalog index's products: the top-k for query vectors, a product's look-alikes
("more like this"), and precomputing every product's list (`CatalogIndex` calls these)."""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from visnet.index.duplicates import collapse
from visnet.index.partitions import exact_topk
from visnet.index.products import ProductFilter, Recommended
from visnet.index.protocol import VectorStore

T = TypeVar("T")
R = TypeVar("R")

if TYPE_CHECKING:
    from visnet.index.catalog_index import CatalogIndex

__all__ = [
    "PROGRESS_META",
    "THRESHOLD_META",
    "Hit",
    "LookAlikes",
    "look_alikes_of",
    "precompute_lists",
    "top_products",
]

log = logging.getLogger(__name__)

THRESHOLD_META = "duplicate_threshold"  # the collapse threshold the stored lists were made with
PROGRESS_META = "precompute_progress"  # a precomputation's settings and its last stored product


@dataclass(frozen=True)
class Hit:
    """One product in a result list, with its best view's inner-product score and the other
    products listing the same picture, collapsed into it (`visnet.index.duplicates`)."""

    product_id: str
    score: float
    duplicates: tuple[str, ...] = ()


@dataclass(frozen=True)
class LookAlikes:
    """A product's look-alikes, and its own other listings (near-duplicates of it, left out)."""

    hits: list[Hit]
    duplicates: tuple[str, ...] = ()


# ---- ranking -------------------------------------------------------------------------------


def look_alikes_of(
    index: CatalogIndex,
    product_id: str,
    k: int,
    same_category: bool,
    filters: ProductFilter | None,
    exact_limit: int,
) -> LookAlikes:
    """``CatalogIndex.look_alikes``: the product's views are the query, itself left out."""
    product = index.products.get(product_id)
    views = index.store.get(index.products.vector_ids(product_id))
    category = product.category if same_category else None
    hits, own = top_products(index, [views], k, category, [product_id], filters, exact_limit)[0]
    return LookAlikes(hits, tuple(pid for pid, _ in own))


def top_products(
    index: CatalogIndex,
    groups: list[np.ndarray],
    k: int,
    category: str | None,
    seeds: list[str | None],
    filters: ProductFilter | None = None,
    exact_limit: int = 0,
    fetch: int = 0,
) -> list[tuple[list[Hit], list[tuple[str, float]]]]:
    """For each group of query rows: the top-k products (views collapsed by max score,
    listings of one picture into one hit), and the listings of the group's seed product
    (its look-alikes' query: left out, and said apart).

    Each query row first asks the store for ``fetch`` vectors (0: ``4k + 8``, room for products
    of a few views and the seed's own); the groups still short of k products ask again, four
    times as many, and only they. A filter that at most ``exact_limit`` vectors pass is searched
    exactly over them; a wider one by the store's own search, widened until k products pass."""
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    fetch = fetch if fetch > 0 else 4 * k + 8
    found: list[tuple[list[Hit], list[tuple[str, float]]] | None] = [None] * len(groups)
    pending = list(range(len(groups)))
    allowed: tuple[np.ndarray, np.ndarray] | None = None  # a narrow filter's (ids, vectors)
    while pending:
        asked = [groups[i] for i in pending]
        queries = np.concatenate(asked)
        starts = np.cumsum([0, *(len(g) for g in asked)])
        if allowed is None:
            ids, scores = index.store.search(queries, fetch, category)
        else:
            ids, scores = exact_topk(*allowed, queries, fetch)
        owners = index.products.owners(ids.ravel().tolist())
        if filters and allowed is None:  # a wide filter: keep what passes
            passing = index.products.matching(owners.values(), filters)
            owners = {vid: pid for vid, pid in owners.items() if pid in passing}
        ranked = [
            _rank(ids[a:b], scores[a:b], owners, seeds[i])
            for a, b, i in zip(starts[:-1], starts[1:], pending, strict=True)
        ]
        got = _collapse(index, ranked, asked, [seeds[i] for i in pending], k)
        limit = index.store.count() if allowed is None else len(allowed[0])
        short = []
        for i, result in zip(pending, got, strict=True):
            found[i] = result
            if len(result[0]) < k and fetch < limit:
                short.append(i)
        pending = short
        if pending and filters and allowed is None:  # short: a narrow filter, searched exactly
            narrow = index.products.filtered_vector_ids(filters, category, exact_limit)
            if narrow is not None:
                allowed = (narrow, index.store.get(narrow))
                continue
        fetch *= 4
    return found  # type: ignore[return-value]  # every group was answered


def _collapse(
    index: CatalogIndex,
    ranked: list[list[tuple[str, float]]],
    groups: list[np.ndarray],
    seeds: list[str | None],
    k: int,
) -> list[tuple[list[Hit], list[tuple[str, float]]]]:
    threshold = index.duplicate_threshold
    views = {} if threshold is None else _listing_views(index, {p for r in ranked for p, _ in r})
    out = []
    for products, group, seed in zip(ranked, groups, seeds, strict=True):
        products = [(pid, score) for pid, score in products if threshold is None or pid in views]
        kept, own = collapse(products, views, threshold, k, group if seed else None)
        hits = [Hit(g.product_id, g.score, tuple(g.duplicates)) for g in kept]
        scores = dict(products)
        out.append((hits, [(pid, scores[pid]) for pid in own]))
    return out


def _listing_views(index: CatalogIndex, product_ids: set[str]) -> dict[str, np.ndarray]:
    """Product id -> its views' vectors, for the products that still have them (a product
    rewritten meanwhile is left out)."""
    owned = index.products.views_of(product_ids)
    try:
        vectors = index.store.get(np.asarray([v for vs in owned.values() for v in vs], np.int64))
    except KeyError:  # a write replaced some views between the two reads: one at a time
        return {
            pid: v
            for pid, v in ((p, _views_now(index.store, vs)) for p, vs in owned.items())
            if v is not None
        }
    bounds = np.cumsum([0, *(len(vs) for vs in owned.values())])
    return {pid: vectors[a:b] for pid, a, b in zip(owned, bounds[:-1], bounds[1:], strict=True)}


def _views_now(store: VectorStore, vector_ids: list[int]) -> np.ndarray | None:
    try:
        return store.get(np.asarray(vector_ids, np.int64))
    except KeyError:
        return None


def _rank(
    ids: np.ndarray, scores: np.ndarray, owners: dict[int, str], exclude: str | None
) -> list[tuple[str, float]]:
    """Rows of vector hits -> products by their best score, best first (ties by id), leaving out
    unowned ids and ``exclude``."""
    best: dict[str, float] = {}
    for vid, score in zip(ids.ravel().tolist(), scores.ravel().tolist(), strict=True):
        pid = owners.get(vid)
        if pid is not None and pid != exclude and score > best.get(pid, -np.inf):
            best[pid] = score
    return [(pid, float(score)) for pid, score in sorted(best.items(), key=lambda t: (-t[1], t[0]))]


# ---- precomputation ------------------------------------------------------------------------


def precompute_lists(
    index: CatalogIndex,
    k: int = 20,
    same_category: bool = True,
    batch: int = 1024,
    progress: bool = False,
    resume: bool = True,
    workers: int = 2,
    fetch: int = 0,
) -> int:
    """Compute and store every product's ``similar`` list (and its own other listings);
    returns the number of products and logs the rate.

    Products go ``batch`` at a time: one read of their views, one batch query per category
    (hnswlib or FAISS on every core), then the near-duplicate collapse; ``workers`` threads
    compute batches side by side (the searches, the vector reads and SQLite let go of the GIL),
    and the lists are stored in batch order. Each stored batch
    records how far the run got, so a run with the same ``k``, ``same_category`` and
    threshold continues after the last stored batch (``resume=False`` starts over). A
    product whose views change meanwhile is skipped, counted and logged. Each query row asks
    the store for ``fetch`` rows (0: k times the catalog's mean views a product, at most 4, plus
    8); a product still short asks again alone (`top_products`).
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for vid, pid, cat in index.products.vector_table():
        groups.setdefault((cat, pid), []).append(vid)
    keys = sorted(groups)
    run = {"k": k, "same_category": same_category, "threshold": index.duplicate_threshold}
    todo = _resume_after(index, keys, run) if resume else keys
    bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc="precompute",
               unit="product", disable=not progress)  # fmt: skip
    begun, skipped = time.perf_counter(), 0
    chunks = [todo[start : start + batch] for start in range(0, len(todo), batch)]
    # rows a query asks for: k products of the catalog's mean number of views, and slack for
    # the product's own (a product still short asks again, alone: `top_products`)
    if fetch < 1:
        views = sum(len(ids) for ids in groups.values()) / max(len(groups), 1)
        fetch = math.ceil(k * min(max(views, 1.0), 4.0)) + 8
    lists_of = functools.partial(
        _similar_lists, index, groups=groups, k=k, same_category=same_category, fetch=fetch
    )
    # the collapse multiplies many small matrices: one BLAS thread does them ~5x faster
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for chunk, (lists, missing) in zip(
            chunks, _ahead(pool, lists_of, chunks, workers), strict=True
        ):
            index.products.put_recommendations(lists)  # in order: the progress mark stays true
            index.products.set_meta(PROGRESS_META, json.dumps({**run, "after": chunk[-1]}))
            skipped += missing
            bar.update(len(chunk))
    bar.close()
    index.products.set_meta(THRESHOLD_META, json.dumps(index.duplicate_threshold))
    index.products.set_meta(PROGRESS_META, json.dumps(None))
    seconds = time.perf_counter() - begun
    log.info(
        "precomputed %d similar products for %d products (%d this run, %d skipped: their "
        "views changed meanwhile) in %.1f s: %.0f products/s",
        k, len(keys), len(todo), skipped, seconds, len(todo) / max(seconds, 1e-9),
    )  # fmt: skip
    return len(keys)


def _ahead(
    pool: ThreadPoolExecutor, function: Callable[[T], R], items: list[T], ahead: int
) -> Iterator[R]:
    """``function`` of each item, in order, computed by ``pool`` at most ``ahead`` items ahead of
    the one handed out (a bounded ``pool.map``: results wait in memory only that far)."""
    waiting: deque[Future[R]] = deque()
    for item in items:
        waiting.append(pool.submit(function, item))
        if len(waiting) > ahead:
            yield waiting.popleft().result()
    while waiting:
        yield waiting.popleft().result()


def _resume_after(
    index: CatalogIndex, keys: list[tuple[str, str]], run: dict
) -> list[tuple[str, str]]:
    """The keys after the last batch an interrupted run with the same settings stored."""
    saved = json.loads(index.products.get_meta(PROGRESS_META) or "null")
    if not saved or {n: saved.get(n) for n in run} != run:
        return keys
    after = tuple(saved["after"])
    log.info("resuming the precomputation after product %r", after[1])
    return keys[bisect.bisect_right(keys, after) :]


def _similar_lists(
    index: CatalogIndex,
    chunk: list[tuple[str, str]],
    groups: dict[tuple[str, str], list[int]],
    k: int,
    same_category: bool,
    fetch: int,
) -> tuple[dict[str, Recommended], int]:
    """The lists of a batch of (category, product) keys, and how many were skipped."""
    views = _batch_views(index.store, [groups[key] for key in chunk])
    lists: dict[str, Recommended] = {}
    for cat in dict.fromkeys(c for c, _ in chunk):
        rows = [i for i, (c, _) in enumerate(chunk) if c == cat and views[i] is not None]
        if not rows:
            continue
        found = top_products(
            index,
            [views[i] for i in rows],  # type: ignore[misc]  # None left out above
            k,
            cat if same_category else None,
            [chunk[i][1] for i in rows],
            fetch=fetch,
        )
        for i, (hits, own) in zip(rows, found, strict=True):
            lists[chunk[i][1]] = ([(h.product_id, h.score, h.duplicates) for h in hits], own)
    return lists, sum(v is None for v in views)


def _batch_views(store: VectorStore, vector_ids: list[list[int]]) -> list[np.ndarray | None]:
    """Each product's views in one read; one read each (None if gone) after a change."""
    try:
        vectors = store.get(np.concatenate(vector_ids).astype(np.int64))
    except KeyError:  # a write replaced some views since the table was read
        return [_views_now(store, ids) for ids in vector_ids]
    bounds = np.cumsum([0, *(len(ids) for ids in vector_ids)])
    return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
