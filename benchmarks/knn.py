"""k-NN benchmark: our store beside the raw hnswlib it wraps, exact search, ingest, freshness.

Queries go one per call, from one thread and then from `--query-threads` threads at once (the
service searches from a thread pool; hnswlib and our store's read lock let searches overlap).
Two raw references: a graph built by one ``add_items`` call ("raw"), and the store's own graph
searched by hnswlib directly ("same graph"): the store's overhead without the difference
between two graphs (the store builds its graph batch by batch, with replaceable deletes). With
one thread, CPU time per query is reported too. At every thread count the store and its own graph
are also timed in alternation ("paired": query by query with one thread, block by block of a few
queries a thread with several): on a shared machine whole passes swing by 20-30%, which hides an
overhead of a few microseconds; alternating cancels the swings. The paired column is the one to
read for the store's overhead.

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
from _vectors import clustered, freshness, percentile, recall, timed_pass

from visnet.index import EmbeddedStore, HnswParams, StoreSettings


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
        fresh, missed = freshness(
            store, clustered(args.fresh_trials, args.dim, centres, rng), args.n, k=args.k
        )
        store.close()
    report(
        args,
        raw_rate,
        store_rate,
        rows,
        exact_qps,
        recall(exact_found, truth[: args.exact_queries]),
        fresh,
        missed,
    )


NAMES = ("raw", "store", "same graph")


def paired_overhead(
    searches: dict[str, Callable[[np.ndarray], object]],
    queries: np.ndarray,
    rounds: int,
    threads: int,
) -> dict[str, float]:
    """Wall microseconds a query of each search, timed in alternation: with one thread query by
    query; with several, block by block (BLOCK queries a thread, all threads on the same search,
    from a common start to the last one's end). A shared machine's slow swings in speed, which
    move whole passes by 20-30%, hit every search alike; each block's order rotates."""
    names = list(searches)
    total = dict.fromkeys(names, 0)
    size = 1 if threads == 1 else BLOCK * threads
    blocks = [queries[lo : lo + size] for lo in range(0, len(queries), size)]
    run = _BlockRunner(threads)
    try:
        for r in range(rounds):
            for b, block in enumerate(blocks):
                shift = (b + r) % len(names)
                for name in names[shift:] + names[:shift]:
                    total[name] += run(searches[name], block)
    finally:
        run.close()
    calls = rounds * len(queries) * 1000
    return {name: total[name] / calls for name in names}


BLOCK = 25  # queries a thread in one timed block of the paired runs (several threads)


class _BlockRunner:
    """Runs one search over a block of queries from `threads` threads kept alive between blocks;
    returns the block's wall nanoseconds (one thread: the caller's own, no hand-off)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.job: tuple[Callable[[np.ndarray], object], np.ndarray] | None = None
        self.start = threading.Barrier(threads + 1)
        self.end = threading.Barrier(threads + 1)
        self.pool = [
            threading.Thread(target=self._work, args=(t,), daemon=True) for t in range(threads)
        ]
        if threads > 1:
            for thread in self.pool:
                thread.start()

    def _work(self, t: int) -> None:
        while True:
            self.start.wait()
            if self.job is None:
                return
            search, block = self.job
            try:
                for q in block[t :: self.threads]:
                    search(q[None, :])
            except BaseException:  # the caller's wait raises BrokenBarrierError, not a hang
                self.start.abort()
                self.end.abort()
                raise
            self.end.wait()

    def __call__(self, search: Callable[[np.ndarray], object], block: np.ndarray) -> int:
        if self.threads == 1:
            start = time.perf_counter_ns()
            for q in block:
                search(q[None, :])
            return time.perf_counter_ns() - start
        self.job = (search, block)
        self.start.wait()
        start = time.perf_counter_ns()
        self.end.wait()
        return time.perf_counter_ns() - start

    def close(self) -> None:
        if self.threads > 1:
            self.job = None
            if not self.start.broken:  # a worker that failed left the barriers broken
                self.start.wait()
            for thread in self.pool:
                thread.join()


def sweep(raw, store, queries, truth, args) -> list[tuple]:
    """(threads, ef, q/s and recall of each of NAMES); runs alternate, median kept."""
    rows = []
    for threads in [int(t) for t in args.query_threads.split(",")]:
        rows += [(threads, *row) for row in _sweep_ef(raw, store, queries, truth, args, threads)]
    return rows


def _sweep_ef(raw, store, queries, truth, args, threads) -> list[tuple]:
    own = store._parts["all"].index  # the store's graph, searched by hnswlib directly
    rows = []
    for ef in [int(e) for e in args.ef.split(",")]:
        raw.set_ef(ef)
        store.set_ef(ef)
        searches = {
            "raw": lambda q: raw.knn_query(q, args.k, num_threads=1)[0],
            "store": lambda q: store.search(q, args.k)[0],
            "same graph": lambda q: own.knn_query(q, args.k, num_threads=1)[0],
        }
        rates: dict[str, list[float]] = {name: [] for name in NAMES}
        cpu: dict[str, list[float]] = {name: [] for name in NAMES}  # one thread: CPU us/query
        found = {}
        for search in searches.values():  # warm-up
            timed_pass(search, queries[:50], threads)
        for _ in range(args.runs):
            for name, search in searches.items():
                start = time.thread_time()
                rate, found[name] = timed_pass(search, queries, threads)
                cpu[name].append((time.thread_time() - start) / len(queries) * 1e6)
                rates[name].append(rate)
        paired = paired_overhead(
            {"same graph": searches["same graph"], "store": searches["store"]},
            queries, args.runs, threads,
        )  # fmt: skip
        rows.append(
            (ef, *(statistics.median(rates[n]) for n in NAMES),
             *(recall(found[n], truth) for n in NAMES),
             *(statistics.median(cpu[n]) if threads == 1 else 0.0 for n in ("store", "same graph")),
             paired["same graph"], paired["store"])
        )  # fmt: skip
    return rows


def report(args, raw_rate, store_rate, rows, exact_qps, exact_recall, fresh, missed) -> None:
    print(
        f"\n{args.n:,} clustered {args.dim}-D vectors, {args.clusters} clusters, "
        f"k={args.k}, HNSW M={args.M} ef_construction={args.ef_construction}, "
        f"{args.queries} queries (one per call), median of {args.runs} runs, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        f"{'threads':>7} {'ef':>4} {'raw q/s':>9} {'store q/s':>10} {'overhead':>9} "
        f"{'raw R@10':>9} {'store R@10':>11} {'same-graph q/s':>15} {'overhead':>9} "
        f"{'CPU us/query store, same graph, overhead':>41} {'paired us, overhead':>20}"
    )
    for threads, ef, raw_qps, store_qps, own_qps, raw_r, store_r, _, cpu, own_cpu, *pair in rows:
        cpu_cols = f"{cpu:>14.1f} {own_cpu:>11.1f} {cpu / own_cpu - 1:>13.1%}" if cpu else " " * 40
        cpu_cols += f" {pair[1]:>6.1f} {pair[0]:>6.1f} {pair[1] / pair[0] - 1:>6.1%}"
        print(
            f"{threads:>7} {ef:>4} {raw_qps:>9,.0f} {store_qps:>10,.0f} "
            f"{raw_qps / store_qps - 1:>8.1%} {raw_r:>9.3f} {store_r:>11.3f} "
            f"{own_qps:>15,.0f} {own_qps / store_qps - 1:>8.1%} {cpu_cols}"
        )
    print(
        f"\nexact search (numpy, 1 query/call, {args.exact_queries} queries): "
        f"{exact_qps:,.1f} q/s, R@10 {exact_recall:.3f}"
    )
    print(
        f"ingest: raw hnswlib add_items {raw_rate:,.0f} vectors/s; store upsert "
        f"(batches of {args.batch}, WAL fsync each) {store_rate:,.0f} vectors/s"
    )
    ms = [t * 1000 for t in fresh]
    print(
        f"upsert -> visible in the next search ({len(ms)} trials): "
        f"median {statistics.median(ms):.2f} ms, p95 {percentile(ms, 0.95):.2f} ms; "
        f"{missed} not in the next query's top {args.k}"
    )
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
