"""`build_index` from finished embedding shards: streamed (memory-mapped) against loaded whole.

    .venv/bin/python benchmarks/stream_build.py --n 200000 --workdir runs/stream-build

A catalog CSV of `--n` products (one view each, as a CSV catalog holds; `--categories`
categories) and the feature-vector job's shards for it (`--dim`-D clustered unit vectors from
`_vectors.py`, as a finished `visnet embed` leaves them) are written once under `--workdir`;
then, each in a fresh process so its peak RSS is its own, the index is built from them to
`--out-dim` (PCA) twice:

- streamed: as `visnet index build --embeddings DIR` does now (`open_shards`: shards
  memory-mapped, only the PCA's sample of rows gathered, products ingested a
  batch at a time);
- whole: the same build with every shard read into one array first (`read_shards`, what the
  build did before it streamed).

The table gives wall time, the peak anonymous memory above the imports (sampled: the process's
own heap, what streaming saves) and peak RSS (`ru_maxrss`, which also counts the pages of the
memory-mapped shards, reclaimable page cache), beside the full-precision vectors' size.
Precomputing look-alikes is left out (`--precompute 0`) unless asked for: it is the same in both
and measured by `benchmarks/scale.py`.

Notes, 2026-12-02 evening, `--n 200000` (a training job at nice 0 and another session's tests
beside it, so the wall times say little; memory does not depend on them):

| build | wall s | peak anonymous GiB (above the imports) | / vectors | peak RSS GiB |
| --- | ---: | ---: | ---: | ---: |
| streamed | 99.1 | 1.58 | 1.65 | 2.74 |
| whole | 149.8 | 2.53 | 2.65 | 2.74 |

Streaming saves exactly the vectors (0.95 GiB here, 51 GB at 10M views of 1,280-D); what is
left grows with the index, not the embeddings: the PCA's sample (100,000 x 1,280 float64, 1 GB,
whatever the catalog's size), the store's 512-D vectors and graph, and the row list.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from _memory import PeakAnon, memory
from _vectors import centres_for, clustered_chunks
from tqdm import tqdm

SHARD = 1024  # rows a shard, the job's default


class Shards:
    """Stands for the model whose vectors the shards hold: the job checks only its name, dim and
    fingerprint (every shard is already written, so nothing is embedded)."""

    name = "synthetic"
    fingerprint = "synthetic-clustered"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, images: list) -> np.ndarray:
        raise RuntimeError("every shard is written; nothing should be embedded")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="catalog products (one view each)")
    p.add_argument("--categories", type=int, default=20)
    p.add_argument("--dim", type=int, default=1280, help="the embedder's dimension")
    p.add_argument("--out-dim", type=int, default=512, help="the index's (PCA)")
    p.add_argument("--precompute", type=int, default=0, help="look-alikes a product (0: none)")
    p.add_argument("--workdir", type=Path, default=Path("runs/stream-build"))
    return p.parse_args()


def make_catalog(args: argparse.Namespace) -> tuple[Path, Path]:
    """The catalog CSV and its finished shards, made once (reused when the sizes match)."""
    folder = args.workdir / f"catalog-{args.n}-{args.dim}"
    catalog, shards = folder / "catalog.csv", folder / "shards"
    if (shards / "manifest.json").is_file():
        return catalog, shards
    shutil.rmtree(folder, ignore_errors=True)
    shards.mkdir(parents=True)
    rows = []
    with catalog.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "category", "image", "title"])
        for i in range(args.n):
            product = i
            row = (f"p{product}", f"c{product % args.categories}", f"images/{i}.jpg")
            out.writerow([*row, f"Product {product}"])
            rows.append(row)
    (shards / "job.json").write_text(
        json.dumps({"fingerprint": Shards.fingerprint, "shard_size": SHARD})
    )
    centres = centres_for(args.n, args.dim, None, seed=7)
    chunks = tqdm(clustered_chunks(args.n, centres, 7, SHARD), total=-(-args.n // SHARD))
    for number, (start, vectors) in enumerate(chunks):
        stem = shards / f"shard-{number:05d}"
        np.save(f"{stem}.npy", vectors)
        kept = [
            {"vector_id": i, "product": p, "category": c, "image": str(folder / image)}
            for i, (p, c, image) in enumerate(rows[start : start + len(vectors)], start)
        ]
        (Path(f"{stem}.json")).write_text(json.dumps({"rows": kept, "skipped": []}))
    return catalog, shards


def build(way: str, catalog: Path, shards: Path, args: argparse.Namespace, queue) -> None:
    from visnet.embed import job
    from visnet.index import build as index_build

    if way == "whole":  # every shard read into one array first, as before the build streamed
        index_build.open_shards = job.read_shards
    out = args.workdir / f"index-{way}"
    shutil.rmtree(out, ignore_errors=True)
    base = memory()["RssAnon"]  # the interpreter and its imports (torch, faiss, sklearn)
    start = time.perf_counter()
    with PeakAnon() as anon:
        summary = index_build.build_index(
            catalog, Shards(args.dim), out, args.out_dim, shards, args.precompute
        )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put(
        {
            "way": way,
            "seconds": seconds,
            "peak": peak,
            "anon": anon.peak - base,
            "vectors": summary["vectors"],
        }
    )
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    args = parse_args()
    catalog, shards = make_catalog(args)
    context = multiprocessing.get_context("spawn")
    results = []
    for way in ("streamed", "whole"):
        queue = context.Queue()
        process = context.Process(target=build, args=(way, catalog, shards, args, queue))
        process.start()
        process.join()  # the result is a few numbers: the queue's pipe never fills
        if process.exitcode != 0:
            raise SystemExit(f"the {way} build failed (exit code {process.exitcode})")
        results.append(queue.get())
    full = args.n * args.dim * 4
    print(
        f"\n{args.n:,} products, {args.dim}-D float32 vectors ({full / 2**30:.2f} GiB) -> "
        f"{args.out_dim}-D index, precompute {args.precompute}\n"
    )
    print("| build | wall s | peak anonymous GiB (above the imports) | / vectors | peak RSS GiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['way']} | {r['seconds']:.1f} | {r['anon'] / 2**30:.2f} | "
            f"{r['anon'] / full:.2f} | {r['peak'] / 2**30:.2f} |"
        )
    streamed, whole = results
    print(
        f"\nstreamed / whole: time {streamed['seconds'] / whole['seconds']:.2f}x, peak anonymous "
        f"memory {streamed['anon'] / whole['anon']:.2f}x (peak RSS also counts the pages of the "
        "memory-mapped shards)"
    )


if __name__ == "__main__":
    main()
