"""Shared by the k-NN benchmarks: clustered unit vectors, exact truth, recall, timed passes."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator

import faiss
import numpy as np

from visnet.index import EmbeddedStore, l2_normalise

CHUNK = 100_000  # vectors made (and searched for the truth) at a time


def centres_for(n: int, dim: int, clusters: int | None, seed: int) -> np.ndarray:
    """The cluster centres: one per 1,000 vectors unless ``clusters`` is given."""
    rng = np.random.default_rng([seed, 1])
    count = clusters or max(1, n // 1000)
    return rng.standard_normal((count, dim)).astype(np.float32) * 1.5


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around random centres, made in chunks to stay float32."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        rows = centres[rng.integers(0, len(centres), stop - start)]
        out[start:stop] = l2_normalise(rows + rng.standard_normal(rows.shape, np.float32))
    return out


def clustered_chunks(
    n: int, centres: np.ndarray, seed: int, chunk: int = CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """The same ``n`` clustered vectors on every call, ``chunk`` at a time as (first id, rows):
    a catalog too big to hold twice is made again instead of kept."""
    for number, start in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([seed, 2, number])
        yield start, clustered(min(chunk, n - start), centres.shape[1], centres, rng)


def exact_truth(
    queries: np.ndarray, chunks: Iterator[tuple[int, np.ndarray]], k: int
) -> np.ndarray:
    """Ids (m, k) of the exact inner-product top-k of each query over a chunked catalog."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start, rows in chunks:
        scores, ids = faiss.knn(queries, rows, k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.I


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k found, per query."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def timed_pass(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, threads: int = 1
) -> tuple[float, np.ndarray]:
    """Queries/s of one pass, one query per call from `threads` threads at once, and the results.

    Thread t answers queries t, t + threads, ...; the clock runs from a common start to the
    last thread's end.
    """
    if threads == 1:
        start = time.perf_counter()
        found = np.vstack([search(q[None, :]) for q in queries])
        return len(queries) / (time.perf_counter() - start), found
    results: list[np.ndarray | None] = [None] * len(queries)
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(t, len(queries), threads):
            results[i] = search(queries[i][None, :])

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    return len(queries) / elapsed, np.vstack(results)  # type: ignore[arg-type]


def median_rate(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, threads: int, runs: int
) -> tuple[float, np.ndarray]:
    """The median q/s of ``runs`` passes after a warm-up, and the last pass's results."""
    timed_pass(search, queries[:50], threads)
    rates, found = [], np.empty(0)
    for _ in range(runs):
        rate, found = timed_pass(search, queries, threads)
        rates.append(rate)
    return statistics.median(rates), found


def freshness(
    store: EmbeddedStore, fresh: np.ndarray, first_id: int, category: str = "all", k: int = 10
) -> tuple[list[float], int]:
    """Seconds from the start of each upsert to the end of the next search for the new vector,
    and how many new vectors that search missed (not in its top ``k``: an approximate index can
    miss a vector it holds, which is recall, not staleness)."""
    times, missed = [], 0
    for i, vector in enumerate(fresh):
        start = time.perf_counter()
        store.upsert(np.array([first_id + i]), vector[None, :], [category])
        found = store.search(vector, k)[0][0]
        times.append(time.perf_counter() - start)
        missed += int(first_id + i not in found)
    return times, missed


def percentile(values: list[float], share: float) -> float:
    """The value at ``share`` (0..1) of the sorted values (nearest rank)."""
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))]
