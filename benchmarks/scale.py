"""Scale benchmark: each partition kind at growing catalog sizes, and a projection to 50M.

For each size and kind, in a fresh process (so its memory is the kind's alone), a store is
built from clustered vectors (`knn.py`'s generator, made in chunks, never held whole), then:
bytes per product in RAM (anonymous RSS) and in memory-mapped files (file-backed RSS, i.e. page
cache, reported apart; and on disk), build time, recall@10 against exact search on a query
sample, q/s with 1 and 2 threads (one query a call), batch q/s (1,024 queries a call on every
core: the precomputation's queries) and upsert-to-visible latency. A Pareto plot (recall against
2-thread q/s, marker area by bytes per product) and, from two sizes or more, the 50M projection
(memory, disk, build and precompute hours) follow; ``--doc`` writes them into a markdown file
between ``<!-- scale:begin -->`` and ``<!-- scale:end -->``.

    python benchmarks/scale.py --n 100000                       # a few minutes: a check
    # docs/SCALE.md's runs (about an hour on 2 cores; 10M float32 vectors would not fit in RAM)
    python benchmarks/scale.py --n 1000000 --kinds exact,hnsw,compressed --out runs/scale-1m \\
        --workdir runs
    python benchmarks/scale.py --n 3000000 --kinds hnsw,compressed --precompute 0 \\
        --out runs/scale-3m --workdir runs --include runs/scale-1m/results.json
    python benchmarks/scale.py --n 10000000 --kinds compressed --precompute 0 \\
        --out runs/scale-10m --workdir runs \\
        --include runs/scale-1m/results.json runs/scale-3m/results.json \\
        --doc docs/SCALE.md --plot docs/scale.png
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from _memory import memory
from _vectors import (
    centres_for,
    clustered,
    clustered_chunks,
    exact_truth,
    freshness,
    median_rate,
    percentile,
    recall,
)

from visnet.index import CatalogIndex, EmbeddedStore, HnswParams, Product, StoreSettings
from visnet.index.compressed import CompressedParams

MARKERS = ("<!-- scale:begin -->", "<!-- scale:end -->")
T = TypeVar("T")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=str, default="100000", help="catalog sizes, comma-separated")
    p.add_argument(
        "--kinds", type=str, default="exact,hnsw,compressed",
        help="partition kinds; compressed:CODEC tries another codec (RaBitQ, SQ8, PQ64, ...)",
    )  # fmt: skip
    p.add_argument("--coarse", type=str, default="flat", help="compressed: flat or hnsw lists")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=None, help="default: one per 1,000 vectors")
    p.add_argument("--queries", type=int, default=1000, help="query sample (recall and q/s)")
    p.add_argument("--exact-queries", type=int, default=100, help="query sample of exact search")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=str, default="1,2", help="concurrent query threads")
    p.add_argument("--runs", type=int, default=3, help="timed passes per point (median kept)")
    p.add_argument("--ef", type=str, default="32,48,64,96", help="HNSW beam widths")
    p.add_argument(
        "--probe", type=str, default="8x8,16x4,16x8,16x16,32x8",
        help="compressed nprobe x rerank points",
    )  # fmt: skip
    p.add_argument("--M", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--batch", type=int, default=10_000, help="vectors per upsert when building")
    p.add_argument("--fresh-trials", type=int, default=50)
    p.add_argument("--precompute", type=int, default=20_000, help="catalog products (0: skip)")
    p.add_argument("--project", type=int, default=50_000_000, help="size to project to")
    p.add_argument("--workdir", type=Path, default=None, help="store folders (default: tmp)")
    p.add_argument("--out", type=Path, default=Path("runs/scale"), help="results.json here")
    p.add_argument("--plot", type=Path, default=None, help="default: OUT/scale.png")
    p.add_argument("--doc", type=Path, default=None, help="markdown file to write the tables in")
    p.add_argument(
        "--include", type=Path, nargs="*", default=[],
        help="results.json of earlier runs, reported (and projected) with this one's",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# ---- measuring one kind at one size (in its own process) ---------------------------------------


def disk_bytes(folder: Path) -> dict[str, int]:
    """Bytes on disk under ``folder``: all of it, and the memory-mapped row files."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    used = {f: f.stat().st_blocks * 512 for f in files}  # sparse row files: blocks written
    return {
        "disk": sum(used.values()),
        "mapped": sum(b for f, b in used.items() if ".f16" in f.name),
    }


def settings_for(kind: str, args: argparse.Namespace) -> StoreSettings:
    """One kind for every partition; ``compressed:CODEC`` picks the compressed kind's codec."""
    store_kind, _, codec = kind.partition(":")
    hnsw = HnswParams(M=args.M, ef_construction=args.ef_construction)
    compressed = CompressedParams(coarse=args.coarse, **({"codec": codec} if codec else {}))
    return StoreSettings(store_kind, hnsw=hnsw, compressed=compressed, log_writes=False)


def build(store: EmbeddedStore, n: int, args: argparse.Namespace) -> float:
    """Upsert the catalog ``args.batch`` vectors at a time; seconds taken."""
    centres = centres_for(n, args.dim, args.clusters, args.seed)
    start = time.perf_counter()
    for first, rows in clustered_chunks(n, centres, args.seed):
        for lo in range(0, len(rows), args.batch):
            ids = np.arange(first + lo, first + min(len(rows), lo + args.batch), dtype=np.int64)
            store.upsert(ids, rows[ids - first], ["all"] * len(ids))
    return time.perf_counter() - start


def operating_points(kind: str, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(label, search settings) of each point to time."""
    if kind == "hnsw":
        return [(f"ef {ef}", {"ef": int(ef)}) for ef in args.ef.split(",")]
    if kind.startswith("compressed"):
        pairs = [p.split("x") for p in args.probe.split(",")]
        return [(f"nprobe {a} rerank {b}", {"nprobe": int(a), "rerank": int(b)}) for a, b in pairs]
    return [("exact", {})]


def time_point(
    store: EmbeddedStore,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
    threads_list: list[int],
) -> dict:
    """Recall and q/s of the store's current search settings."""

    def search(q: np.ndarray) -> np.ndarray:
        return store.search(q, args.k)[0]

    found_rates = {t: median_rate(search, queries, t, args.runs) for t in threads_list}
    batch = queries[np.arange(1024) % len(queries)]
    start = time.perf_counter()
    store.search(batch, args.k)
    batch_qps = len(batch) / (time.perf_counter() - start)
    return {
        "recall": recall(found_rates[threads_list[0]][1], truth[: len(queries)]),
        "qps": {str(t): r for t, (r, _) in found_rates.items()},
        "batch_qps": batch_qps,
    }


def warm_up(kind: str, args: argparse.Namespace) -> None:
    """Use the kind once on a small store, so that what its first use loads and keeps (BLAS
    buffers, thread pools) is not counted as the catalog's memory."""
    x = clustered(2000, args.dim, centres_for(2000, args.dim, None, 99), np.random.default_rng(0))
    store = EmbeddedStore(args.dim, settings=settings_for(kind, args))
    store.upsert(np.arange(2000), x, ["warm"] * 2000)
    store.search(x[:1], args.k)
    store.search(x[:64], args.k)
    del store
    gc.collect()


def measure(kind: str, n: int, opts: dict, truth_file: str) -> dict:
    """Build one kind at one size and measure it (run in a fresh process)."""
    args = argparse.Namespace(**opts)
    logging.basicConfig(level=logging.WARNING)
    saved = np.load(truth_file)
    queries, truth = saved["queries"], saved["truth"]
    if kind == "exact":
        queries = queries[: args.exact_queries]
    warm_up(kind, args)
    before = memory()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        store = EmbeddedStore(args.dim, Path(tmp) / "store", settings_for(kind, args))
        build_s = build(store, n, args)
        start = time.perf_counter()
        store.snapshot()
        snapshot_s = time.perf_counter() - start
        gc.collect()
        after, disk = memory(), disk_bytes(Path(tmp) / "store")
        points = []
        threads = [int(t) for t in args.threads.split(",")]
        for label, search in operating_points(kind, args):
            if "ef" in search:
                store.set_ef(search["ef"])
            elif search:
                store.set_compressed_search(search["nprobe"], search["rerank"])
            points.append({"label": label, **time_point(store, queries, truth, args, threads)})
        centres = centres_for(n, args.dim, args.clusters, args.seed)
        fresh = clustered(args.fresh_trials, args.dim, centres, np.random.default_rng(7))
        fresh_s, fresh_missed = freshness(store, fresh, n, k=args.k)
        fresh_ms = [t * 1000 for t in fresh_s]
        store.close()
    return {
        "kind": kind,
        "n": n,
        "build_s": build_s,
        "snapshot_s": snapshot_s,
        "ram_bytes": after["RssAnon"] - before["RssAnon"],
        "page_cache_bytes": after["RssFile"] - before["RssFile"],
        "peak_bytes": after["VmHWM"],
        **disk,
        "fresh_ms": {"median": statistics.median(fresh_ms), "p95": percentile(fresh_ms, 0.95)},
        "fresh_missed": fresh_missed,  # of len(fresh) trials, not in the next query's top k
        "fresh_trials": len(fresh),
        "k": args.k,
        "points": points,
        "load": os.getloadavg(),
    }


def precompute_rate(kind: str, n: int, opts: dict) -> float:
    """Products/s of ``CatalogIndex.precompute_similar`` (k=20) over ``n`` one-view products."""
    args = argparse.Namespace(**opts)
    centres = centres_for(n, args.dim, args.clusters, args.seed)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        index = CatalogIndex.create(
            Path(tmp) / "ix",
            model_fingerprint="scale",
            model_name="scale",
            embedding_dim=args.dim,
            settings=settings_for(kind, args),
        )
        for first, rows in clustered_chunks(n, centres, args.seed, chunk=10_000):
            products = [Product(f"p{first + i:09d}", "all") for i in range(len(rows))]
            index.upsert_many(zip(products, rows[:, None, :], strict=True))
        start = time.perf_counter()
        index.precompute_similar(k=20)
        rate = n / (time.perf_counter() - start)
        index.close()
    return rate


def in_fresh_process(function: Callable[..., T], *arguments: object) -> T:
    """``function(*arguments)`` in a new process (its memory measured alone)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


# ---- reporting ---------------------------------------------------------------------------------


def points_at(results: list[dict], n: int) -> list[dict]:
    """Every operating point at size ``n``, with its kind, bytes per product and 2-thread q/s."""
    return [
        {**p, "kind": r["kind"], "bytes": r["ram_bytes"] / n, "qps2": max(p["qps"].values())}
        for r in results
        if r["n"] == n
        for p in r["points"]
    ]


def pareto(points: list[dict]) -> set[tuple[str, str]]:
    """(kind, label) of the points no other point matches or beats on recall, q/s and bytes."""

    def key(p: dict) -> tuple[float, float, float]:
        return p["recall"], p["qps2"], -p["bytes"]

    def beats(a: dict, b: dict) -> bool:
        return all(x >= y for x, y in zip(key(a), key(b), strict=True)) and key(a) != key(b)

    return {(p["kind"], p["label"]) for p in points if not any(beats(o, p) for o in points)}


def table(results: list[dict]) -> str:
    """The measurements as a markdown table, one row per size, kind and operating point."""
    lines = [
        "| n | kind | point | RAM B/product | page cache B/product | disk B/product | build s "
        "| recall@10 | q/s 1 thread | q/s 2 threads | batch q/s | upsert to visible ms p50/p95 "
        "| Pareto |",
        "|" + " --- |" * 13,
    ]
    for n in sorted({r["n"] for r in results}):
        best = pareto(points_at(results, n))
        for r in (r for r in results if r["n"] == n):
            per = {name: r[name] / n for name in ("ram_bytes", "page_cache_bytes", "disk")}
            fresh = f"{r['fresh_ms']['median']:.1f}/{r['fresh_ms']['p95']:.1f}"
            if r.get("fresh_missed"):
                fresh += (
                    f" ({r['fresh_missed']} of {r['fresh_trials']} not in the next query's "
                    f"top {r['k']})"
                )
            for p in r["points"]:
                qps = [f"{p['qps'].get(t, 0):,.0f}" for t in ("1", "2")]
                lines.append(
                    f"| {n:,} | {r['kind']} | {p['label']} | {per['ram_bytes']:,.0f} "
                    f"| {per['page_cache_bytes']:,.0f} | {per['disk']:,.0f} | {r['build_s']:,.0f} "
                    f"| {p['recall']:.3f} | {qps[0]} | {qps[1]} | {p['batch_qps']:,.0f} | {fresh} "
                    f"| {'yes' if (r['kind'], p['label']) in best else ''} |"
                )
    return "\n".join(lines)


def fit(sizes: list[int], values: list[float], at: int, power: bool, rate: bool = False) -> float:
    """``values`` measured at ``sizes``, extended to ``at``: a line through them (memory), or
    a power law (times, rates), fitted by least squares. From one size a total grows in
    proportion and a rate stays as measured (no growth to go by)."""
    x, y = np.asarray(sizes, float), np.asarray(values, float)
    if len(x) == 1:
        return float(y[0] if rate else y[0] * at / x[0])
    if power:
        slope, intercept = np.polyfit(np.log(x), np.log(np.maximum(y, 1e-9)), 1)
        return float(np.exp(intercept) * at**slope)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept + slope * at)


def projection(results: list[dict], rates: dict[str, float], target: int) -> str:
    """Memory, disk, build and precompute time at ``target`` products, per kind, from growth."""
    lines = [
        f"| kind | sizes measured | RAM GB at {target:,} | page cache GB | disk GB | build h "
        "| fastest point with recall@10 >= 0.95 at the largest size measured (its recall "
        f"there; its q/s with 2 threads fitted to {target:,}) "
        "| precompute h (k=20) |",
        "|" + " --- |" * 8,
    ]
    for kind in dict.fromkeys(r["kind"] for r in results):
        runs = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["n"])
        lines.append(project_kind(runs, rates.get(kind), target))
    return "\n".join(lines)


def project_kind(runs: list[dict], rate: float | None, target: int) -> str:
    """One kind's projection row (see ``projection``)."""
    sizes = [r["n"] for r in runs]
    ram, cache, disk = (
        fit(sizes, [r[f] for r in runs], target, power=False) / 1e9
        for f in ("ram_bytes", "page_cache_bytes", "disk")
    )
    build_h = fit(sizes, [r["build_s"] for r in runs], target, power=True) / 3600
    best = max(runs[-1]["points"], key=lambda p: (p["recall"] >= 0.95, max(p["qps"].values())))
    same = [next(p for p in r["points"] if p["label"] == best["label"]) for r in runs]
    qps = fit(sizes, [max(p["qps"].values()) for p in same], target, power=True, rate=True)
    batch = fit(sizes, [p["batch_qps"] for p in same], target, power=True, rate=True)
    # a product's list costs its knn share at that size plus the rest (SQLite, the collapse),
    # measured on a small catalog as the whole time less its knn share there
    rest = max(0.0, 1 / rate - 1 / same[0]["batch_qps"]) if rate else 0.0
    precompute_h = target * (1 / batch + rest) / 3600
    return (
        f"| {runs[0]['kind']} | {', '.join(f'{s:,}' for s in sizes)} | {ram:,.1f} | {cache:,.1f} "
        f"| {disk:,.1f} | {build_h:,.1f} | {best['label']}: {best['recall']:.3f} at "
        f"{sizes[-1]:,}, {qps:,.0f} q/s{' (one size: as measured)' if len(sizes) == 1 else ''} "
        f"| {precompute_h:,.1f} |"
    )


def plot(results: list[dict], path: Path) -> None:
    """Recall@10 against 2-thread q/s, one panel per size measured (at most the three largest);
    marker area by RAM bytes per product, Pareto points ringed, the 0.95 recall line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in results})[-3:]
    kinds = list(dict.fromkeys(r["kind"] for r in results))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 5), sharey=True)
    for ax, n in zip(np.atleast_1d(axes), sizes, strict=True):
        plot_size(ax, points_at(results, n), kinds)
        ax.set(xlabel="queries/s, 2 threads, one query a call", title=f"{n:,} clustered vectors")
    np.atleast_1d(axes)[0].set_ylabel("recall@10 against exact search")
    fig.suptitle("recall, speed and memory (marker area: RAM bytes a product)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_size(ax, points: list[dict], kinds: list[str]) -> None:  # type: ignore[no-untyped-def]
    """One size's operating points on ``ax`` (each kind in its own colour, in ``kinds`` order)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    best = pareto(points)
    for kind in dict.fromkeys(p["kind"] for p in points):
        mine, colour = [p for p in points if p["kind"] == kind], f"C{kinds.index(kind)}"
        ax.scatter(
            [p["qps2"] for p in mine],
            [p["recall"] for p in mine],
            s=[max(20.0, p["bytes"] / 10) for p in mine],
            c=colour,
            alpha=0.6,
            label=f"{kind} ({mine[0]['bytes']:,.0f} B/product in RAM)",
        )
        for p in mine:
            edge = "k" if (kind, p["label"]) in best else "none"
            ax.scatter([p["qps2"]], [p["recall"]], s=12, c=colour, edgecolors=edge)
            ax.annotate(p["label"], (p["qps2"], p["recall"]), fontsize=7, alpha=0.8)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
    ax.xaxis.set_major_formatter(plain)
    low, high = ax.get_xlim()
    ax.xaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())  # within a decade
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def write_doc(doc: Path, text: str) -> None:
    """Replace what lies between the scale markers in ``doc`` (or append them)."""
    old = doc.read_text() if doc.exists() else ""
    begin, end = MARKERS
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = f"{old.rstrip()}\n\n{block}\n" if old else f"{block}\n"
    doc.write_text(new)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes, kinds = [int(n) for n in args.n.split(",")], args.kinds.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    opts = {k: v for k, v in vars(args).items()}
    results, rates = [], {}
    for n in sizes:
        centres = centres_for(n, args.dim, args.clusters, args.seed)
        queries = clustered(args.queries, args.dim, centres, np.random.default_rng([args.seed, 3]))
        start = time.perf_counter()
        truth = exact_truth(queries, clustered_chunks(n, centres, args.seed), args.k)
        print(
            f"{n:,}: exact truth for {len(queries)} queries in {time.perf_counter() - start:.0f} s"
        )
        truth_file = args.out / f"truth-{n}.npz"
        np.savez(truth_file, queries=queries, truth=truth)
        for kind in kinds:
            results.append(in_fresh_process(measure, kind, n, opts, str(truth_file)))
            r = results[-1]
            print(
                f"{n:,} {kind}: built in {r['build_s']:.0f} s, "
                f"{r['ram_bytes'] / n:,.0f} B/product in RAM, load {r['load'][0]:.2f}"
            )
    if args.precompute:
        for kind in kinds:
            rates[kind] = in_fresh_process(precompute_rate, kind, args.precompute, opts)
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = [{"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "load": load}]
    counted = args.precompute if rates else 0  # products the precompute rates were timed on
    saved_now = {"results": results, "precompute": rates, "runs": runs, "precompute_n": counted}
    (args.out / "results.json").write_text(json.dumps(saved_now))
    for earlier in args.include:
        saved = json.loads(earlier.read_text())
        results, rates = saved["results"] + results, {**saved["precompute"], **rates}
        counted = counted or saved.get("precompute_n", 0)
        runs = saved.get("runs", []) + runs
    report = render(args, results, rates, runs, counted)
    print(report)
    plot(results, args.plot or args.out / "scale.png")
    if args.doc:
        write_doc(args.doc, report)


def render(
    args: argparse.Namespace,
    results: list[dict],
    rates: dict[str, float],
    runs: list[dict],
    counted: int,
) -> str:
    measured = "; ".join(
        f"`{r['command']}` ({r['date']}; load average at its end {r['load']})" for r in runs
    )
    lines = [
        f"Measured on {os.cpu_count()} cores ({args.dim}-D, k={args.k}, {args.queries} queries, "
        f"median of {args.runs} passes) by {measured}.",
        "",
        table(results),
        "",
    ]
    if rates:
        lines += [
            f"Precomputation (`CatalogIndex.precompute_similar`, k=20) over {counted:,} "
            "one-view products: "
            + ", ".join(f"{kind} {rate:,.0f} products/s" for kind, rate in rates.items()),
            "",
        ]
    lines += [
        f"Projection to {args.project:,} products:",
        "",
        projection(results, rates, args.project),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
