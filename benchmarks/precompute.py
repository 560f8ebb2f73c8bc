"""The look-alike precomputation: rows asked a product, side by side on one index, in one run.

Each strategy recomputes every product's list from scratch (``precompute_lists(resume=False)``)
on the same index and reports products/s; the lists of each strategy are compared with the
first's (the widest): the share of its top-k that the other finds. Strategies are the rows
each query asks the store for: ``wide`` is 4k + 8 (what every precomputation asked before
2026-12-03), ``sized`` what it asks now (k times the catalog's mean views a product + 8; a product
still short asks again alone).

An index prepared by ``benchmarks/api.py --bulk`` (clustered products of one view each):

    python benchmarks/api.py --index data/demo-index --model models/visnet-default.pt \\
        --synthetic 100000 --categories 4 --bulk --store-kind compressed --work runs/api-100k \\
        --prepare-only --no-precompute
    python benchmarks/precompute.py --index runs/api-100k/index

The index's stored lists are replaced (by the last strategy's); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from visnet.index.catalog_index import CatalogIndex
from visnet.index.look_alikes import precompute_lists


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, required=True, help="an index folder (changed in place)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--workers", type=int, default=2, help="threads computing batches")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    manifest = json.loads((args.index / "manifest.json").read_text())
    index = CatalogIndex.open(args.index, model_fingerprint=manifest["model_fingerprint"])
    try:
        strategies = {"wide (4k + 8)": 4 * args.k + 8, "sized (now)": 0}
        lists: dict[str, dict[str, list[str]]] = {}
        rates: dict[str, float] = {}
        for name, fetch in strategies.items():
            start = time.perf_counter()
            count = precompute_lists(
                index, k=args.k, resume=False, workers=args.workers, fetch=fetch, progress=True
            )
            rates[name] = count / (time.perf_counter() - start)
            lists[name] = {}
            for pid in sorted({pid for _, pid, _ in index.products.vector_table()}):
                rows = index.recommendation_rows(pid)
                lists[name][pid] = [r[0] for r in rows[0]] if rows else []
    finally:
        index.close()
    first = next(iter(strategies))
    kind = manifest["store"]["kind"]
    print(f"\n{count:,} products, k={args.k}, {args.workers} threads, {kind} store\n")
    print("| rows asked | products/s | x wide | agreement with wide@k |")
    print("| --- | ---: | ---: | ---: |")
    for name in strategies:
        same = sum(
            len(set(lists[name][pid]) & set(top)) for pid, top in lists[first].items()
        ) / max(1, sum(len(top) for top in lists[first].values()))
        print(f"| {name} | {rates[name]:,.0f} | {rates[name] / rates[first]:.2f} | {same:.4f} |")


if __name__ == "__main__":
    main()
