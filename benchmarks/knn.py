"""k-NN benchmark: our store beside the raw hnswlib it wraps, exact search, ingest, freshness.

Queries go one per call, from one thread and then from `--query-threads` threads at once (the
service searches from a thread pool; hnswlib and our store's read lock let searches overlap).

    python benchmarks/knn.py --n 1000000      # about 20 minutes here, most of it building
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import hnswlib
import numpy as np

from visnet.index import EmbeddedStore, HnswParams, StoreSettings, l2_normalise


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000, help="catalog vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=None, help="default: one per 1,000 vectors")
    p.add_argument("--queries", type=int, default=1000, help="queries for the HNSW runs")
    p.add_argument("--exact-queries", type=int, default=100, help="queries for exact search")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--M", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=str, default="32,48,64,96", help="search beam widths to sweep")
    p.add_argument("--batch", type=int, default=1000, help="vectors per upsert when ingesting")
    p.add_argument("--fresh-trials", type=int, default=50, help="upsert-then-search trials")
    p.add_argument("--runs", type=int, default=3, help="timed runs per point (median kept)")
    p.add_argument("--threads", type=int, default=-1, help="build threads (-1: all cores)")
    p.add_argument(
        "--query-threads", type=str, default="1,2", help="concurrent query threads to sweep"
    )
    p.add_argument("--workdir", type=Path, default=None, help="store folder (default: a tmp dir)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around random centres, made in chunks to stay float32."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        rows = centres[rng.integers(0, len(centres), stop - start)]
        out[start:stop] = l2_normalise(rows + rng.standard_normal(rows.shape, np.float32))
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
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
    return len(queries) / elapsed, np.vstack(results)


def build_raw(x: np.ndarray, args: argparse.Namespace) -> tuple[hnswlib.Index, float]:
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(len(x), M=args.M, ef_construction=args.ef_construction, random_seed=100)
    start = time.perf_counter()
    index.add_items(x, np.arange(len(x)), num_threads=args.threads)
    return index, len(x) / (time.perf_counter() - start)


def build_store(
    x: np.ndarray, args: argparse.Namespace, folder: Path
) -> tuple[EmbeddedStore, float]:
    params = HnswParams(M=args.M, ef_construction=args.ef_construction)
    store = EmbeddedStore(x.shape[1], folder, StoreSettings(kind="hnsw", hnsw=params))
    start = time.perf_counter()
    for lo in range(0, len(x), args.batch):
        ids = np.arange(lo, min(len(x), lo + args.batch), dtype=np.int64)
        store.upsert(ids, x[ids], ["all"] * len(ids))
    return store, len(x) / (time.perf_counter() - start)


def freshness(store: EmbeddedStore, fresh: np.ndarray, first_id: int) -> list[float]:
    """Seconds from the start of an upsert to a search that returns the new vector."""
    times = []
    for i, vector in enumerate(fresh):
        start = time.perf_counter()
        store.upsert(np.array([first_id + i]), vector[None, :], ["all"])
        found = store.search(vector, 1)[0][0, 0]
        times.append(time.perf_counter() - start)
        assert found == first_id + i, "an upserted vector was not visible in the next query"
    return times


def main() -> None:
    args = parse_args()
    args.clusters = args.clusters or max(1, args.n // 1000)
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32) * 1.5
    x = clustered(args.n, args.dim, centres, rng)
    queries = clustered(args.queries, args.dim, centres, rng)
    truth = faiss.knn(queries, x, args.k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    raw, raw_rate = build_raw(x, args)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        store, store_rate = build_store(x, args, Path(tmp) / "store")
        rows = sweep(raw, store, queries, truth, args)
        exact_qps, exact_found = timed_pass(
            lambda q: np.argsort(-(x @ q[0]))[: args.k][None, :], queries[: args.exact_queries]
        )
        fresh = freshness(store, clustered(args.fresh_trials, args.dim, centres, rng), args.n)
        store.close()
    report(
        args,
        raw_rate,
        store_rate,
        rows,
        exact_qps,
        recall(exact_found, truth[: args.exact_queries]),
        fresh,
    )


def sweep(raw, store, queries, truth, args) -> list[tuple[int, int, float, float, float, float]]:
    """(threads, ef, raw q/s, store q/s, raw recall, store recall); runs alternate, median kept."""
    rows = []
    for threads in [int(t) for t in args.query_threads.split(",")]:
        rows += [(threads, *row) for row in _sweep_ef(raw, store, queries, truth, args, threads)]
    return rows


def _sweep_ef(
    raw, store, queries, truth, args, threads
) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for ef in [int(e) for e in args.ef.split(",")]:
        raw.set_ef(ef)
        store.set_ef(ef)
        searches = {
            "raw": lambda q: raw.knn_query(q, args.k, num_threads=1)[0],
            "store": lambda q: store.search(q, args.k)[0],
        }
        rates: dict[str, list[float]] = {"raw": [], "store": []}
        found = {}
        for search in searches.values():  # warm-up
            timed_pass(search, queries[:50], threads)
        for _ in range(args.runs):
            for name, search in searches.items():
                rate, found[name] = timed_pass(search, queries, threads)
                rates[name].append(rate)
        raw_qps, store_qps = (statistics.median(rates[n]) for n in ("raw", "store"))
        rows.append(
            (ef, raw_qps, store_qps, recall(found["raw"], truth), recall(found["store"], truth))
        )
    return rows


def report(args, raw_rate, store_rate, rows, exact_qps, exact_recall, fresh) -> None:
    print(
        f"\n{args.n:,} clustered {args.dim}-D vectors, {args.clusters} clusters, "
        f"k={args.k}, HNSW M={args.M} ef_construction={args.ef_construction}, "
        f"{args.queries} queries (one per call), median of {args.runs} runs, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        f"{'threads':>7} {'ef':>4} {'raw q/s':>9} {'store q/s':>10} {'overhead':>9} "
        f"{'raw R@10':>9} {'store R@10':>11}"
    )
    for threads, ef, raw_qps, store_qps, raw_r, store_r in rows:
        print(
            f"{threads:>7} {ef:>4} {raw_qps:>9,.0f} {store_qps:>10,.0f} "
            f"{raw_qps / store_qps - 1:>8.1%} {raw_r:>9.3f} {store_r:>11.3f}"
        )
    print(
        f"\nexact search (numpy, 1 query/call, {args.exact_queries} queries): "
        f"{exact_qps:,.1f} q/s, R@10 {exact_recall:.3f}"
    )
    print(
        f"ingest: raw hnswlib add_items {raw_rate:,.0f} vectors/s; store upsert "
        f"(batches of {args.batch}, WAL fsync each) {store_rate:,.0f} vectors/s"
    )
    ms = sorted(t * 1000 for t in fresh)
    print(
        f"upsert -> visible in the next search ({len(ms)} trials): "
        f"median {statistics.median(ms):.2f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.2f} ms"
    )


if __name__ == "__main__":
    main()
