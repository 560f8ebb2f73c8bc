"""API load test: a real server in a subprocess, a keep-alive load generator here (loopback only).

Reports requests/s and latency percentiles for ``GET /v1/products/{id}/similar`` (random products)
and ``POST /v1/search`` (one photo a request), after a warm-up, over several runs (median kept).

    python benchmarks/api.py                                   # tiny synthetic catalog
    python benchmarks/api.py --model untrained --synthetic 20000
    python benchmarks/api.py --index data/index --model models/visnet-default.pt

``--synthetic N`` adds N products with random unit vectors (one view each, spread over
``--categories`` labels) straight through ``CatalogIndex`` before the server starts, and
precomputes their recommendation lists (``--no-precompute`` to serve them live). The index is
copied into a work folder first, so the given one is never changed.

Preparing a million products takes a while (insert, then precompute); it can run apart from the
timed part, which must run on a quiet machine:

    python benchmarks/api.py --index data/demo-index --model models/visnet-default.pt \
        --synthetic 1000000 --work runs/api-1m --prepare-only     # slow, need not be quiet
    python benchmarks/api.py --model models/visnet-default.pt --work runs/api-1m --reuse

``--bulk`` prepares a catalog of synthetic products alone, through the path ``visnet index
build`` writes with (``write_index``: no write-ahead log, one snapshot; partitions of
``--store-kind``), with clustered vectors (``_vectors.py``'s generator) in ``--categories``
categories, for the model of ``--index``; then precomputes the lists, resumably (rerun the same
command after a kill), and reports the bytes a product the stored lists take:

    python benchmarks/api.py --index data/demo-index --model models/visnet-default.pt \
        --synthetic 10000000 --categories 4 --bulk --store-kind compressed --work runs/api-10m \
        --prepare-only
    python benchmarks/api.py --model models/visnet-default.pt --work runs/api-10m --reuse \
        --phases similar

``--phases similar,route`` also asks the same /similar answers through FastAPI's routing
(``same_category=on``, which the service's fast path for plain requests leaves to the route) and
prints the ratio: what `routes.SimilarFastPath` is worth.

``--stored-only`` asks only for products whose list is already stored: the stored path at the
catalog's full size while its precomputation is still part done (a product without a stored
list is computed live, far slower).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _load import by_endpoint, closed_loop, get_request, install_uvloop, search_request
from _server import catalog_root, copy_index, free_port, metrics_text, start_server, stop_server
from _vectors import centres_for, clustered_chunks
from PIL import Image
from tqdm import tqdm

from visnet.index.catalog_index import CatalogIndex
from visnet.index.products import Product


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, help="index folder (default: build a tiny one)")
    p.add_argument("--model", default="colour-histogram", help="the index's model")
    p.add_argument("--synthetic", type=int, default=0, help="random products to add")
    p.add_argument("--categories", type=int, default=10, help="labels for synthetic products")
    p.add_argument("--no-precompute", dest="precompute", action="store_false")
    p.add_argument(
        "--bulk", action="store_true", help="a new index of --synthetic products alone, in bulk"
    )
    p.add_argument(
        "--store-kind",
        default="auto",
        help="--bulk's partition kind (auto, exact, hnsw, compressed); compressed for "
        "categories of millions (auto would build each as HNSW up to compressed_threshold first)",
    )
    p.add_argument(
        "--stored-only",
        action="store_true",
        help="/similar asks only for products whose list is stored (an index whose "
        "precomputation is part done: the stored path at the catalog's full size)",
    )
    p.add_argument("--cache-size", type=int, default=10_000, help="server /similar cache (0: off)")
    p.add_argument("--concurrency", type=int, default=16, help="connections for /similar")
    p.add_argument("--requests", type=int, default=10_000, help="per /similar run")
    p.add_argument("--search-concurrency", type=int, default=2)
    p.add_argument("--search-requests", type=int, default=200, help="per /search run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=30.0, help="cap on one run")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--prepare-only", action="store_true", help="prepare --work, then stop")
    p.add_argument("--reuse", action="store_true", help="serve the index prepared in --work")
    p.add_argument("--detector", help="a detector checkpoint for the server (/search crops)")
    p.add_argument(
        "--random-photos", action="store_true", help="search with 480x480 JPEGs, not catalog ones"
    )
    p.add_argument(
        "--phases",
        type=lambda v: v.split(","),
        default=["similar", "search"],
        help="similar,search; route: /similar again through FastAPI's routing (the answers "
        "`routes.SimilarFastPath` gives before it), for the ratio",
    )
    return p.parse_args()


# ---- preparing the index ---------------------------------------------------------------------


def prepare_index(args: argparse.Namespace, work: Path) -> tuple[Path, Path | None]:
    """The index to serve (a copy) and the folder of photos to search with, if any."""
    if args.index is None:  # the tiny synthetic set, indexed at full dimension
        from visnet.data.synthetic import make_synthetic_set
        from visnet.embed.registry import create_embedder
        from visnet.index.build import build_index

        root, index = work / "set", work / "index"
        make_synthetic_set(root, seed=0)
        build_index(root, create_embedder(args.model), index, dim=0)
        return index, root / "photos"
    index = copy_index(args.index, work / "index")
    root = catalog_root(index)
    return index, root / "photos" if root is not None else None


def add_synthetic(
    index_dir: Path, n: int, categories: int, precompute: bool, seed: int = 0
) -> dict:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    index = CatalogIndex.open(index_dir, model_fingerprint=manifest["model_fingerprint"])
    rng, dim, timings = np.random.default_rng(seed), manifest["embedding_dim"], {}
    try:
        start = time.perf_counter()
        for lo in tqdm(range(0, n, 10_000), desc="insert", unit="x10k products"):
            hi = min(n, lo + 10_000)
            vectors = rng.standard_normal((hi - lo, dim)).astype(np.float32)
            items = [
                (
                    Product(f"syn-{i:07d}", f"cat-{i % categories}", f"synthetic {i}"),
                    vectors[j : j + 1],
                )
                for j, i in enumerate(range(lo, hi))
            ]
            index.upsert_many(items)
        timings["insert_s"] = round(time.perf_counter() - start, 1)
        if precompute:
            start = time.perf_counter()
            index.precompute_similar(k=20, progress=True)
            timings["precompute_s"] = round(time.perf_counter() - start, 1)
        index.snapshot()
        return timings
    finally:
        index.close()


def build_bulk(args: argparse.Namespace, work: Path) -> tuple[Path, Path | None, dict]:
    """A new index of ``args.synthetic`` clustered products alone (the model of ``args.index``),
    written in bulk, then its lists precomputed; reruns continue where a killed one stopped
    (the build is redone unless it finished, the precomputation resumes). The index, the photo
    folder of ``args.index``'s catalog, and the timings."""
    from visnet.index.build import write_index
    from visnet.index.embedded import StoreSettings

    if args.index is None:
        sys.exit("--bulk needs --index (the model whose fingerprint the new index records)")
    manifest = json.loads((args.index / "manifest.json").read_text())
    model = {
        "model": manifest["model_name"],
        "fingerprint": manifest["model_fingerprint"],
        "dim": manifest["embedding_dim"],
    }
    root = catalog_root(args.index)
    photo_dir = root / "photos" if root is not None else None
    index_dir, built, timings = work / "index", work / "built.json", {}
    if not built.is_file():
        shutil.rmtree(index_dir, ignore_errors=True)
        start = time.perf_counter()
        settings = StoreSettings(kind=args.store_kind)
        products = synthetic_products(args.synthetic, args.categories, model["dim"])
        write_index(index_dir, products, model, None, precompute_k=0,
                    settings=settings, total=args.synthetic)  # fmt: skip
        timings["build_s"] = round(time.perf_counter() - start, 1)
        built.write_text(json.dumps(timings))
    timings = json.loads(built.read_text())
    if args.precompute:
        index = CatalogIndex.open(index_dir, model_fingerprint=model["fingerprint"])
        try:
            start = time.perf_counter()
            index.precompute_similar(k=20, progress=True)  # resumes an interrupted run
            timings["precompute_s_this_run"] = round(time.perf_counter() - start, 1)
            index.snapshot()
        finally:
            index.close()
    timings["list_bytes_per_product"] = list_bytes(index_dir, args.synthetic)
    return index_dir, photo_dir, timings


def synthetic_products(n: int, categories: int, dim: int) -> Iterator[tuple[Product, np.ndarray]]:
    """``n`` products of one view each, clustered, round-robin over the categories."""
    centres = centres_for(n, dim, None, seed=0)
    for first, rows in clustered_chunks(n, centres, seed=0):
        for j, row in enumerate(rows):
            i = first + j
            yield Product(f"syn-{i:08d}", f"cat-{i % categories}", f"synthetic {i}"), row[None, :]


def list_bytes(index_dir: Path, products: int) -> float | None:
    """Bytes a product of the stored lists (their table and its indexes, by SQLite's ``dbstat``;
    None where SQLite was built without it)."""
    import sqlite3

    with sqlite3.connect(index_dir / "products.sqlite") as db:
        try:
            used = db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name = 'recommendations' "
                "OR name LIKE 'sqlite_autoindex_recommendations%'"
            ).fetchone()[0]
        except sqlite3.OperationalError:
            return None
    return round((used or 0) / max(1, products), 1)


def product_ids(
    index_dir: Path, limit: int = 200_000, stored_only: bool = False
) -> tuple[list[str], int]:
    """Up to ``limit`` product ids, spread over the whole table (or over the products whose list
    is stored), and the product count."""
    import sqlite3

    with sqlite3.connect(index_dir / "products.sqlite") as db:
        count = db.execute("SELECT count(*) FROM products").fetchone()[0]
        if stored_only:
            rows = db.execute("SELECT DISTINCT product_id FROM recommendations")
            stored = [row[0] for row in rows]
            return stored[:: max(1, len(stored) // limit)], count
        step = max(1, count // limit)
        rows = db.execute("SELECT id FROM products WHERE rowid % ? = 0", (step,))
        return [row[0] for row in rows], count


# ---- the load ----------------------------------------------------------------------------------


def photos(folder: Path | None, count: int = 32) -> list[bytes]:
    if folder is not None:
        files = sorted(folder.glob("*.jpg"))[:count]
        if files:
            return [f.read_bytes() for f in files]
    rng, out = np.random.default_rng(0), []
    for _ in range(count):  # no photos: smooth random 480x480 images, JPEG-encoded
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((480, 480), Image.Resampling.BICUBIC).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def load(port: int, requests: list[bytes], total: int, concurrency: int, seconds: float) -> dict:
    """One closed-loop run of ``requests`` in random order: throughput and latencies."""
    answers, took = asyncio.run(
        closed_loop(port, lambda: ("", random.choice(requests)), total, concurrency, seconds)
    )
    found = by_endpoint(answers)[""]
    requests_done = int(found.pop("requests"))
    return {
        "requests": requests_done,
        "errors": found.pop("errors"),
        "rps": round(requests_done / took, 1),
        **found,
    }


def run_phase(name: str, port: int, requests: list[bytes], total: int, conc: int, args) -> dict:
    load(port, requests, max(conc * 4, total // 10), conc, 5.0)  # warm-up
    runs = [load(port, requests, total, conc, args.max_seconds) for _ in range(args.runs)]
    best = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    for run in runs:
        print(f"  {name:8s} {json.dumps(run)}")
    return {"median_run": best, "runs": runs, "concurrency": conc}


def measure(args: argparse.Namespace, port: int, ids: list[str], photo_dir: Path | None) -> dict:
    results: dict = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    if "similar" in args.phases:
        picked = random.Random(0).sample(ids, min(len(ids), 50_000))
        similar = [get_request(f"/v1/products/{pid}/similar?k={args.k}") for pid in picked]
        results["similar"] = run_phase(
            "similar", port, similar, args.requests, args.concurrency, args
        )
    if "route" in args.phases:  # the same answers through FastAPI's routing: the fast path off
        # `same_category=on` is true to the route, but not plain enough for SimilarFastPath
        routed = [
            get_request(f"/v1/products/{pid}/similar?k={args.k}&same_category=on")
            for pid in random.Random(0).sample(ids, min(len(ids), 50_000))
        ]
        results["route"] = run_phase("route", port, routed, args.requests, args.concurrency, args)
        if "similar" in results:
            fast, slow = (results[n]["median_run"]["rps"] for n in ("similar", "route"))
            results["fast_path_x"] = round(fast / slow, 2)
            print(f"/similar: fast path {fast:,.0f} requests/s, through the route {slow:,.0f}: "
                  f"{fast / slow:.2f}x")  # fmt: skip
    if "search" in args.phases:
        searches = [search_request(p) for p in photos(None if args.random_photos else photo_dir)]
        results["search"] = run_phase(
            "search", port, searches, args.search_requests, args.search_concurrency, args
        )
    results["similar_sources"] = [
        line
        for line in metrics_text(port).splitlines()
        if line.startswith("visnet_similar_responses_total")
    ]
    results["load_average_after"] = os.getloadavg()
    return results


def main() -> None:
    args = parse_args()
    install_uvloop()
    if (args.prepare_only or args.reuse) and args.work is None:
        sys.exit("--prepare-only and --reuse need --work DIR")
    work = args.work or Path(tempfile.mkdtemp(prefix="visnet-api-bench-"))
    prepared = work / "prepared.json"
    if args.reuse:
        if not prepared.is_file():
            sys.exit(f"{work} holds no prepared index; run with --prepare-only first")
        state = json.loads(prepared.read_text())
        index, prep = Path(state["index"]), state["prepare"]
        photo_dir = Path(state["photos"]) if state["photos"] else None
    else:
        work.mkdir(parents=True, exist_ok=True)
        prepared.unlink(missing_ok=True)
        prep = {}
        if args.bulk:
            index, photo_dir, prep = build_bulk(args, work)
        else:
            index, photo_dir = prepare_index(args, work)
            if args.synthetic:
                prep = add_synthetic(index, args.synthetic, args.categories, args.precompute)
        state = {"index": str(index), "photos": str(photo_dir or ""), "prepare": prep}
        prepared.write_text(json.dumps(state))
    ids, count = product_ids(index, stored_only=args.stored_only)
    print(f"index {index}: {count:,} products; {prep}")
    if args.stored_only:
        print(f"/similar asks for {len(ids):,} of the products whose list is stored")
    if args.prepare_only:
        return
    port = free_port()
    server = start_server(
        index,
        args.model,
        port,
        work / "server.log",
        args.detector,
        settings={"similar_cache_size": str(args.cache_size), "refresh_after_s": "0"},
    )
    try:
        results = {"products": count, "prepare": prep, "cache_size": args.cache_size}
        results["stored_only"] = args.stored_only
        results |= measure(args, port, ids, photo_dir)
    finally:
        stop_server(server)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in results.items() if k not in args.phases}, indent=2))
    for name in args.phases:
        print(f"{name}: {json.dumps(results[name]['median_run'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
