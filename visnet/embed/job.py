"""The feature-vector job: catalog views -> embeddings, written as resumable shards.

Catalog rows go through the embedding pipeline (`visnet.embed.pipeline`: parallel decode,
batched embedding, bad images skipped and counted), in this process or on Ray actors (an
`Engine`: `local_engine`, or `visnet.embed.ray_engine.RayEngine`); the writer here puts out one
`.npy` shard and its `.json` rows at a time, rows in catalog order, each moved into place when
complete.

    OUT/shard-00000.npy        float32 (n, dim), unit rows
    OUT/shard-00000.json       {"rows": [{"vector_id", "product", "category", "image"}, ...],
                                "skipped": [{"image", "error"}, ...]}
    OUT/manifest.json          model name, fingerprint, dim, counts; written last
A rerun with the same model skips the shards already written (resume after a kill).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visnet.data.catalog import read_catalog
from visnet.data.street2shop import read_set
from visnet.embed.pipeline import (
    Batch,
    Item,
    PipelineSettings,
    Skipped,
    embed_items,
    run_pipeline,
)
from visnet.embed.registry import embedder_fingerprint
from visnet.features.base import Embedder
from visnet.io import atomic_path, write_json_atomic


@dataclass(frozen=True)
class CatalogRow:
    """One catalog view to embed: its vector id, its product, category and image file."""

    vector_id: int
    product: str
    category: str
    image: str


def catalog_rows(source: str | Path) -> list[CatalogRow]:
    """Every catalog view of a Street2Shop-layout folder, a catalog file, or a category folder."""
    source = Path(source)
    if (source / "meta" / "json").is_dir():
        data = read_set(source, check_boxes=False)  # street boxes: not the catalog's concern
        rows = []
        for shop in data.shop:
            path = data.photo_path(shop.photo)
            image = str(path) if path else str(source / "photos" / f"{shop.photo}.jpg")
            rows.append(CatalogRow(shop.photo, str(shop.product), shop.category, image))
        return rows
    items = read_catalog(source)
    return [CatalogRow(i, item.id, item.category, str(item.image)) for i, item in enumerate(items)]


def catalog_items(rows: list[CatalogRow]) -> list[Item]:
    """The pipeline's items for catalog rows: key = position in `rows`, source = the image file."""
    return [Item(i, row.image) for i, row in enumerate(rows)]


def embed_catalog(
    rows: list[CatalogRow], embedder: Embedder, settings: PipelineSettings | None = None
) -> tuple[np.ndarray, list[CatalogRow], list[dict[str, str]]]:
    """Every row through the embedding pipeline, in memory: (vectors, kept rows, skipped)."""
    settings = settings or PipelineSettings(desc="embed catalog")
    done = embed_items(catalog_items(rows), embedder, settings)
    return done.single(), [rows[i] for i in done.keys], [_skip(rows, s) for s in done.skipped]


def _skip(rows: list[CatalogRow], skipped: Skipped) -> dict[str, str]:
    return {"image": rows[skipped.key].image, "error": skipped.detail or skipped.reason}


class _ShardWriter:
    """The job's writer: gathers batches by shard and writes each shard once whole, its rows in
    catalog order whatever order the batches came in (an engine may finish them out of order)."""

    def __init__(
        self, out: Path, rows: list[CatalogRow], shard_size: int, embedder: Embedder
    ) -> None:
        self.out, self.rows, self.shard_size = out, rows, shard_size
        self.name, self.dim = embedder.name, embedder.dim
        # shard -> (embedded keys, their vectors, skipped keys and what went wrong)
        self.parts: dict[int, tuple[list[int], list[np.ndarray], list[tuple[int, dict]]]] = {}
        self.seen: dict[int, int] = {}

    def write(self, batch: Batch) -> None:
        for key, vector in zip(batch.keys, batch.vectors[self.name], strict=True):
            keys, vectors, _ = self._part(key)
            keys.append(key)
            vectors.append(vector)
            self._done_one(key)
        for skipped in batch.skipped:
            self._part(skipped.key)[2].append((skipped.key, _skip(self.rows, skipped)))
            self._done_one(skipped.key)

    def _part(self, key: int) -> tuple[list[int], list[np.ndarray], list[tuple[int, dict]]]:
        return self.parts.setdefault(key // self.shard_size, ([], [], []))

    def _done_one(self, key: int) -> None:
        shard = key // self.shard_size
        self.seen[shard] = self.seen.get(shard, 0) + 1
        if self.seen[shard] == min(self.shard_size, len(self.rows) - shard * self.shard_size):
            keys, vectors, skipped = self.parts.pop(shard)  # every row embedded or skipped
            order = np.argsort(keys, kind="stable")
            stacked = np.stack(vectors)[order] if vectors else np.zeros((0, self.dim), np.float32)
            kept = [self.rows[keys[i]] for i in order]
            _write_shard(self.out, shard, stacked, kept, [s for _, s in sorted(skipped)])


def _write_shard(out: Path, index: int, vectors: np.ndarray, kept: list, skipped: list) -> None:
    stem = out / f"shard-{index:05d}"
    with atomic_path(f"{stem}.npy") as tmp:
        np.save(tmp, vectors.astype(np.float32))
    # the .json, written last, marks the shard complete
    write_json_atomic(f"{stem}.json", {"rows": [asdict(r) for r in kept], "skipped": skipped})


# How a job's batches are embedded: (items still to do, the job's embedder, pipeline settings)
# -> batches, in any order. The local engine is the embedding pipeline in this process; the Ray
# engine (`visnet.embed.ray_engine`) runs it on actors across a Ray cluster.
Engine = Callable[[list[Item], Embedder, PipelineSettings], Iterable[Batch]]


def local_engine(
    items: list[Item], embedder: Embedder, settings: PipelineSettings
) -> Iterator[Batch]:
    """The embedding pipeline in this process (threaded decode, batched embedding)."""
    return run_pipeline(items, {embedder.name: embedder}, settings)


def run_embed_job(
    source: str | Path,
    embedder: Embedder,
    out: str | Path,
    shard_size: int = 1024,
    settings: PipelineSettings | None = None,
    engine: Engine = local_engine,
) -> dict[str, Any]:
    """Embed every catalog view of `source` into shards under `out`; return the manifest.

    `engine` embeds the views still to do (`local_engine`, or a `RayEngine`); either writes the
    same shards, so `visnet index build` reads either, and either resumes the other's run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = embedder_fingerprint(embedder)
    _check_existing(out, fingerprint, shard_size)
    (out / "job.json").write_text(
        json.dumps({"fingerprint": fingerprint, "shard_size": shard_size})
    )
    rows = catalog_rows(source)
    shards = (len(rows) + shard_size - 1) // shard_size
    # shards written by an earlier, interrupted run are not redone
    todo = [
        item
        for item in catalog_items(rows)
        if not (out / f"shard-{item.key // shard_size:05d}.json").is_file()
    ]
    writer = _ShardWriter(out, rows, shard_size, embedder)
    settings = settings or PipelineSettings(desc="embed", progress=True)
    for batch in engine(todo, embedder, settings):
        writer.write(batch)
    return _write_manifest(out, embedder, fingerprint, shards, len(rows))


def _check_existing(out: Path, fingerprint: str, shard_size: int) -> None:
    job = out / "job.json"
    if job.is_file():
        previous = json.loads(job.read_text())
        if previous != {"fingerprint": fingerprint, "shard_size": shard_size}:
            raise ValueError(
                f"{out} holds shards of another model or shard size ({previous}); "
                "use another --out or delete it"
            )


def _write_manifest(
    out: Path, embedder: Embedder, fingerprint: str, shards: int, total: int
) -> dict[str, Any]:
    skipped = []
    count = 0
    for index in range(shards):
        meta = json.loads((out / f"shard-{index:05d}.json").read_text())
        count += len(meta["rows"])
        skipped += meta["skipped"]
    manifest = {
        "model": embedder.name,
        "fingerprint": fingerprint,
        "dim": embedder.dim,
        "shards": shards,
        "vectors": count,
        "catalog_views": total,
        "skipped": skipped,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


class ShardVectors:
    """A finished job's vectors, memory-mapped shard by shard: ``vectors[indices]`` gathers
    those rows (numbered across shards, as `open_shards`'s rows are) without reading the rest,
    so a catalog's vectors need not fit in memory."""

    def __init__(self, shards: list[np.ndarray], dim: int) -> None:
        self.shards = shards
        self.dim = dim
        self.starts = np.cumsum([0] + [len(shard) for shard in shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def __getitem__(self, indices: np.ndarray | list[int] | slice) -> np.ndarray:
        if isinstance(indices, slice):
            indices = np.arange(len(self))[indices]
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} vectors")
        out = np.empty((len(indices), self.dim), np.float32)
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            out[mask] = self.shards[shard][indices[mask] - self.starts[shard]]
        return out


def open_shards(out: str | Path) -> tuple[ShardVectors, list[CatalogRow], dict[str, Any]]:
    """A finished job's vectors (memory-mapped, `ShardVectors`), rows in order, and manifest."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{out}: no manifest.json; the embed job has not finished")
    manifest = json.loads(manifest_path.read_text())
    shards, rows = [], []
    for index in range(manifest["shards"]):
        shards.append(np.load(out / f"shard-{index:05d}.npy", mmap_mode="r"))
        meta = json.loads((out / f"shard-{index:05d}.json").read_text())
        rows += [CatalogRow(**r) for r in meta["rows"]]
    return ShardVectors(shards, int(manifest["dim"])), rows, manifest


def read_shards(out: str | Path) -> tuple[np.ndarray, list[CatalogRow], dict[str, Any]]:
    """All vectors (in memory) and rows of a finished job, in order, with its manifest."""
    vectors, rows, manifest = open_shards(out)
    return vectors[:], rows, manifest
