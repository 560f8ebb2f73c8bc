"""The feature-vector job on Ray beside the local job: images/s on the same cores, and each Ray
worker's own rate, from which a cluster's is projected (``docs/DEPLOY.md``).

The first ``--images`` catalog views of ``--catalog`` (the demo set) are copied into a CSV
catalog, then embedded by `visnet embed`'s job three ways into fresh folders: the local job (the
embedding pipeline, onnxruntime on every core, 2 decode threads), and the Ray job with each
``--workers`` count (a local Ray instance of ``--cpus`` CPUs, actors of ``--cpus-per-worker``).
Both use onnxruntime (``--backend``), so their vectors agree (checked). Reported per run: wall
time and images/s, for Ray with and without the actors' start (model load); each worker's busy
rate (images / seconds inside its calls) and their sum, the rate a cluster adds per worker.

    python benchmarks/ray_embed.py --images 2000 --workers 1,2      # the real run (quiet machine)
    python benchmarks/ray_embed.py --images 64 --workers 1 --model m.onnx  # a quick check
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from visnet.embed.job import catalog_rows, local_engine, read_shards, run_embed_job
from visnet.embed.pipeline import Item, PipelineSettings, read_item
from visnet.embed.ray_engine import RayEngine, RaySettings
from visnet.embed.registry import create_embedder


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", type=Path, default=Path("data/demo"))
    p.add_argument("--model", default="models/visnet-default.pt")
    p.add_argument("--backend", default="onnx", help="onnx, torch or torch-bf16 (never auto)")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="1,2", help="Ray actor counts to sweep")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--address", default=None, help="a Ray cluster instead of a local instance")
    return p.parse_args()


def small_catalog(source: Path, count: int, folder: Path) -> Path:
    """A CSV catalog of the first ``count`` views of ``source``, images copied beside it."""
    (folder / "photos").mkdir(parents=True)
    path = folder / "catalog.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "category", "image", "title"])
        for row in catalog_rows(source)[:count]:
            name = f"photos/{row.vector_id}{Path(row.image).suffix}"
            shutil.copyfile(row.image, folder / name)
            writer.writerow([f"{row.product}-{row.vector_id}", row.category, name, row.product])
    return path


def feed_rate(catalog: Path, embedder, count: int = 200) -> float:
    """Images/s one thread decodes and prepares (resize, normalise) for the network: what one
    CPU core feeds a GPU worker, whose own forward pass is far faster."""
    items = [Item(i, row.image) for i, row in enumerate(catalog_rows(catalog)[:count])]
    prepare = getattr(embedder, "prepare", lambda image: image)
    for item in items[:8]:  # warm-up
        prepare(read_item(item))
    start = time.perf_counter()
    for item in items:
        prepare(read_item(item))
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = small_catalog(args.catalog, args.images, work / "catalog")
        embedder = create_embedder(args.model, args.backend, args.batch_size)  # type: ignore[arg-type]
        n = len(catalog_rows(catalog))
        print(f"{n} images, {args.model} ({args.backend}), batches of {args.batch_size}")
        feed = feed_rate(catalog, embedder)
        start = time.perf_counter()
        settings = PipelineSettings(batch_size=args.batch_size, desc="local job")
        run_embed_job(catalog, embedder, work / "local", settings=settings, engine=local_engine)
        local_s = time.perf_counter() - start
        reference = read_shards(work / "local")[0]
        rows = [("local job", local_s, n / local_s, None, None, None, 0.0)]

        start = time.perf_counter()
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        init_s = time.perf_counter() - start
        for workers in [int(w) for w in args.workers.split(",")]:
            engine = RayEngine(
                RaySettings(
                    str(args.model),
                    backend=args.backend,
                    workers=workers,
                    cpus_per_worker=args.cpus_per_worker,
                    batch_size=args.batch_size,
                )
            )
            out = work / f"ray-{workers}"
            start = time.perf_counter()
            run_embed_job(catalog, embedder, out, engine=engine)
            wall = time.perf_counter() - start
            diff = float(np.abs(read_shards(out)[0] - reference).max())
            rates = [s.rate for s in engine.stats.values()]
            busy = max(s.seconds for s in engine.stats.values())
            rows.append(
                (f"ray, {workers} workers", wall, n / wall, n / busy, statistics.median(rates),
                 sum(rates), diff)
            )  # fmt: skip
        ray.shutdown()
    print(f"Ray start (ray.init, once): {init_s:.1f} s; decode + prepare on one thread: "
          f"{feed:.1f} img/s (what one core feeds a GPU worker)")  # fmt: skip
    print(
        f"{'job':>18} {'wall s':>8} {'img/s':>8} {'img/s busy':>11} {'per worker':>11} "
        f"{'workers sum':>12} {'vs local':>9} {'max |diff|':>11}"
    )
    for name, wall, rate, busy_rate, per_worker, total, diff in rows:
        cells = [f"{wall:8.1f}", f"{rate:8.1f}"]
        cells += [f"{v:11.1f}" if v is not None else f"{'':>11}" for v in (busy_rate, per_worker)]
        cells += [f"{total:12.1f}" if total is not None else f"{'':>12}"]
        cells += [f"{rate / rows[0][2]:8.2f}x", f"{diff:11.2e}"]
        print(f"{name:>18} " + " ".join(cells))
    print(
        "img/s: over the wall time, the actors' start (each loads the model) included; img/s "
        "busy: over the longest worker's time inside its calls; per worker: the median worker's "
        "own rate, which a cluster multiplies by its workers"
    )


if __name__ == "__main__":
    main()
