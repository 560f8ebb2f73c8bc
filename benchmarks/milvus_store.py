"""The Milvus store beside the embedded store: ingest, recall@10, q/s and upsert-to-visible.

Both stores answer the same clustered 512-D vectors (`_vectors.py`'s generator) and the same
queries, one query per call, from 1 and then 2 threads (median of ``--runs`` passes after a
warm-up). Pairs of like kinds: the embedded exact partition against Milvus FLAT, the embedded
HNSW partition against Milvus HNSW (same ``M``, ``efConstruction`` and ``ef``). The default
Milvus is Milvus Lite in this process (a ``.db`` file in a temporary folder): Lite is for tests,
not speed (pure Python over gRPC on the same cores), so its figures are what Lite costs, not
what a cluster does. ``--uri http://host:19530`` measures a real Milvus instead (then the
network and the server's own cores count; ``--token`` if it needs one).

    python benchmarks/milvus_store.py --n 100000          # the real run (a quiet machine)
    python benchmarks/milvus_store.py --n 2000 --queries 100 --runs 1 --fresh-trials 10  # check
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import faiss
import numpy as np
from _vectors import centres_for, clustered, freshness, median_rate, percentile, recall

from visnet.index import EmbeddedStore, HnswParams, StoreSettings, VectorStore
from visnet.index.milvus import MilvusSettings, MilvusStore


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="catalog vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ef", type=int, default=HnswParams().ef)
    p.add_argument("--batch", type=int, default=1000, help="vectors per upsert when ingesting")
    p.add_argument("--fresh-trials", type=int, default=50, help="upsert-then-search trials")
    p.add_argument("--runs", type=int, default=3, help="timed passes per point (median kept)")
    p.add_argument("--threads", type=str, default="1,2", help="query threads to sweep")
    p.add_argument("--kinds", type=str, default="exact,hnsw", help="exact and/or hnsw pairs")
    p.add_argument("--uri", type=str, default=None, help="a Milvus server (default: Lite)")
    p.add_argument("--token", type=str, default="")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def embedded(kind: str, dim: int, folder: Path, ef: int) -> EmbeddedStore:
    hnsw = HnswParams(ef=ef)
    return EmbeddedStore(dim, folder / f"embedded-{kind}", StoreSettings(kind=kind, hnsw=hnsw))


def milvus(kind: str, dim: int, args: argparse.Namespace, folder: Path) -> MilvusStore:
    uri = args.uri or str(folder / "lite.db")
    index = "FLAT" if kind == "exact" else "HNSW"
    search = {} if kind == "exact" else {"ef": args.ef}
    settings = MilvusSettings(uri, token=args.token, index_type=index, search_params=search)
    return MilvusStore.create(dim, settings, f"bench_{uuid.uuid4().hex[:12]}", {})


def measure(
    name: str, store: VectorStore, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, args
) -> dict:
    ids = np.arange(len(x), dtype=np.int64)
    start = time.perf_counter()
    for first in range(0, len(x), args.batch):
        stop = first + args.batch
        store.upsert(ids[first:stop], x[first:stop], ["all"] * len(ids[first:stop]))
    store.snapshot()  # Milvus: flush, so the searches below see sealed, indexed segments
    ingest = len(x) / (time.perf_counter() - start)

    def search(q: np.ndarray) -> np.ndarray:
        return store.search(q, args.k)[0]

    row = {"store": name, "ingest": ingest}
    for threads in [int(t) for t in args.threads.split(",")]:
        rate, found = median_rate(search, queries, threads, args.runs)
        row[f"qps{threads}"] = rate
        row["recall"] = recall(found, truth)
    rng = np.random.default_rng([args.seed, 9])
    fresh = clustered(args.fresh_trials, x.shape[1], centres_for(len(x), x.shape[1], None, 0), rng)
    times, row["fresh_missed"] = freshness(store, fresh, len(x), k=args.k)  # type: ignore[arg-type]
    row["fresh_p50"], row["fresh_p95"] = percentile(times, 0.5), percentile(times, 0.95)
    return row


def print_table(rows: list[dict], threads: list[int]) -> None:
    head = ["store", "ingest vec/s", "recall@10"] + [f"q/s {t}t" for t in threads]
    head += ["visible ms p50", "p95", "missed"]
    print("  ".join(f"{h:>16}" for h in head))
    for r in rows:
        cells = [r["store"], f"{r['ingest']:,.0f}", f"{r['recall']:.3f}"]
        cells += [f"{r[f'qps{t}']:,.0f}" for t in threads]
        cells += [f"{1000 * r['fresh_p50']:.2f}", f"{1000 * r['fresh_p95']:.2f}"]
        cells.append(str(r["fresh_missed"]))  # upserted vectors not in the next query's top k
        print("  ".join(f"{c:>16}" for c in cells))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def print_ratios(rows: list[dict], threads: list[int]) -> None:
    """Embedded over Milvus for each pair of like kinds: how many times faster ours is."""
    by_name = {r["store"]: r for r in rows}
    for kind, other in (("exact", "FLAT"), ("hnsw", "HNSW")):
        ours, theirs = by_name.get(f"embedded {kind}"), by_name.get(f"milvus {other}")
        if ours is None or theirs is None:
            continue
        parts = [f"q/s {t}t {ratio(ours[f'qps{t}'], theirs[f'qps{t}'])}" for t in threads]
        parts.append(f"ingest {ratio(ours['ingest'], theirs['ingest'])}")
        parts.append(f"visible p50 {ratio(theirs['fresh_p50'], ours['fresh_p50'])} faster")
        print(f"embedded {kind} / milvus {other}: " + ", ".join(parts))


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(1)  # the truth only; the stores use their own threads
    centres = centres_for(args.n, args.dim, None, args.seed)
    x = clustered(args.n, args.dim, centres, np.random.default_rng([args.seed, 2]))
    queries = clustered(args.queries, args.dim, centres, np.random.default_rng([args.seed, 3]))
    truth = faiss.knn(queries, x, args.k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    threads = [int(t) for t in args.threads.split(",")]
    where = "Milvus at " + args.uri if args.uri else "Milvus Lite (in this process)"
    print(f"{args.n:,} vectors, {args.dim}-D, k={args.k}, ef {args.ef}; {where}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            for name, make in (
                (f"embedded {kind}", lambda k=kind: embedded(k, args.dim, Path(tmp), args.ef)),
                (
                    f"milvus {'FLAT' if kind == 'exact' else 'HNSW'}",
                    lambda k=kind: milvus(k, args.dim, args, Path(tmp)),
                ),
            ):
                store = make()
                try:
                    rows.append(measure(name, store, x, queries, truth, args))
                finally:
                    drop = getattr(store, "drop", None)
                    drop() if drop else store.close()
                print(f"  {name}: done", flush=True)
    print_table(rows, threads)
    print_ratios(rows, threads)
    print(f"(q/s: median of {args.runs} passes of {len(queries)} queries after a warm-up)")


if __name__ == "__main__":
    main()
