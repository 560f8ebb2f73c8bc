"""The feature-vector job: catalog views -> embeddings, written as resumable shards.

Reader (catalog rows) -> mapper (decode + embed a batch; a bad image is skipped and reported) ->
writer (one `.npy` shard and its `.json` rows at a time, each moved into place when complete).

    OUT/shard-00000.npy        float32 (n, dim), unit rows
    OUT/shard-00000.json       {"rows": [{"vector_id", "product", "category", "image"}, ...],
                                "skipped": [{"image", "error"}, ...]}
    OUT/manifest.json          model name, fingerprint, dim, counts; written last
A rerun with the same model skips the shards already written (resume after a kill).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visnet.data.catalog import read_catalog
from visnet.data.street2shop import read_set
from visnet.embed.registry import embedder_fingerprint
from visnet.features.base import Embedder
from visnet.images import ImageError, load_image

log = logging.getLogger(__name__)


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
        data = read_set(source)
        rows = []
        for shop in data.shop:
            path = data.photo_path(shop.photo)
            image = str(path) if path else str(source / "photos" / f"{shop.photo}.jpg")
            rows.append(CatalogRow(shop.photo, str(shop.product), shop.category, image))
        return rows
    items = read_catalog(source)
    return [CatalogRow(i, item.id, item.category, str(item.image)) for i, item in enumerate(items)]


def _batches(rows: list[CatalogRow], size: int) -> Iterator[list[CatalogRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def embed_rows(rows: list[CatalogRow], embedder: Embedder) -> tuple[np.ndarray, list, list]:
    """Decode and embed a batch; unreadable images are returned as skipped, never raised."""
    images, kept, skipped = [], [], []
    for row in rows:
        try:
            images.append(load_image(row.image))
            kept.append(row)
        except ImageError as exc:
            skipped.append({"image": row.image, "error": f"{type(exc).__name__}: {exc}"})
    vectors = embedder.embed(images) if images else np.zeros((0, embedder.dim), np.float32)
    return vectors, kept, skipped


def _write_shard(out: Path, index: int, vectors: np.ndarray, kept: list, skipped: list) -> None:
    stem = out / f"shard-{index:05d}"
    tmp_npy, tmp_json = Path(f"{stem}.npy.tmp"), Path(f"{stem}.json.tmp")
    with tmp_npy.open("wb") as f:
        np.save(f, vectors.astype(np.float32))
    tmp_json.write_text(json.dumps({"rows": [asdict(r) for r in kept], "skipped": skipped}))
    os.replace(tmp_npy, f"{stem}.npy")
    os.replace(tmp_json, f"{stem}.json")  # the .json marks the shard complete


def run_embed_job(
    source: str | Path, embedder: Embedder, out: str | Path, shard_size: int = 1024
) -> dict[str, Any]:
    """Embed every catalog view of `source` into shards under `out`; return the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = embedder_fingerprint(embedder)
    _check_existing(out, fingerprint, shard_size)
    (out / "job.json").write_text(
        json.dumps({"fingerprint": fingerprint, "shard_size": shard_size})
    )
    rows = catalog_rows(source)
    shards = list(_batches(rows, shard_size))
    bar = tqdm(total=len(rows), desc="embed", unit="img")
    for index, shard in enumerate(shards):
        if (out / f"shard-{index:05d}.json").is_file():
            bar.update(len(shard))  # written by an earlier, interrupted run
            continue
        vectors, kept, skipped = embed_rows(shard, embedder)
        _write_shard(out, index, vectors, kept, skipped)
        bar.update(len(shard))
    bar.close()
    return _write_manifest(out, embedder, fingerprint, len(shards), len(rows))


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
    for item in skipped:
        log.warning("skipped %s: %s", item["image"], item["error"])
    manifest = {
        "model": embedder.name,
        "fingerprint": fingerprint,
        "dim": embedder.dim,
        "shards": shards,
        "vectors": count,
        "catalog_views": total,
        "skipped": skipped,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "manifest.json")
    return manifest


def read_shards(out: str | Path) -> tuple[np.ndarray, list[CatalogRow], dict[str, Any]]:
    """All vectors and rows of a finished job, in order, with its manifest."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{out}: no manifest.json; the embed job has not finished")
    manifest = json.loads(manifest_path.read_text())
    vectors, rows = [], []
    for index in range(manifest["shards"]):
        vectors.append(np.load(out / f"shard-{index:05d}.npy"))
        meta = json.loads((out / f"shard-{index:05d}.json").read_text())
        rows += [CatalogRow(**r) for r in meta["rows"]]
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, manifest["dim"]), np.float32)
    return stacked, rows, manifest
