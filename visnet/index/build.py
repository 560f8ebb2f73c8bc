"""Build a catalog index from a catalog: embed -> fit PCA -> ingest -> precompute -> snapshot.

The catalog is embedded by the embedding pipeline (`visnet.embed.pipeline`: parallel decode,
batched embedding, bad images skipped and counted), in memory; or, given an `embeddings` folder,
by the resumable feature-vector job, whose shards a rerun after a kill picks up. A catalog of
more than `STREAM_VIEWS` views always takes the second way (its shards in `OUT.embeddings`
unless told otherwise), and its build streams: the shards are memory-mapped, the PCA is fitted
on the seeded sample `fit_pca` takes (`visnet.index.pca.MAX_SAMPLES`), and products are gathered
and ingested `INGEST_BATCH` at a time, so the full-precision vectors are never all in memory
(the row list and the id maps are: about 0.5 KB a view).

The index is built in `OUT.partial` and moved into place only when complete, so a failed or
killed build never leaves a half-written index where a server would open it. That staging
folder is the build's safety net, so its vector store takes no write-ahead log: each vector is
written once, by the final snapshot.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visnet.data.catalog import SHOP_FIELDS, read_catalog, read_side_info, shop_fields
from visnet.embed.job import (
    CatalogRow,
    ShardVectors,
    catalog_rows,
    embed_catalog,
    open_shards,
    run_embed_job,
)
from visnet.embed.pipeline import PipelineSettings
from visnet.embed.registry import embedder_fingerprint
from visnet.features.base import Embedder
from visnet.index.catalog_index import CatalogIndex
from visnet.index.embedded import StoreSettings
from visnet.index.pca import PCA, fit_pca, sample_rows
from visnet.index.products import Product
from visnet.index.stores import StoreChoice, discard_store
from visnet.io import replace_folder, staging_folder

log = logging.getLogger(__name__)

INGEST_BATCH = 4096  # products per write: one SQLite transaction pair each
PRECOMPUTE_K = 20  # recommendations stored per product, unless told otherwise
STREAM_VIEWS = 500_000  # past this many catalog views the build streams through shards

Vectors = np.ndarray | ShardVectors  # rows gathered by `vectors[indices]`


# the catalog.jsonl attributes of a Street2Shop-layout set that products keep (the others, such
# as every view's path and the source file, are the data set's bookkeeping)
SET_ATTRIBUTES = ("variant_of", "kind", "split", "hue_shift")


def _side_info(source: Path) -> tuple[dict[str, dict[str, Any]], tuple[str, ...] | None]:
    """Titles, attributes and shop fields (price, brand, in_stock) by product id, and the
    attributes to keep (None: all): a Street2Shop-layout set's catalog.jsonl, else the plain
    catalog's own rows (CSV, JSONL or folder: every attribute is the catalog owner's)."""
    if (source / "meta" / "json").is_dir():
        info = read_side_info(source)
        for item in info.values():  # shop fields at the top or among the attributes
            values = {**(item.get("attributes") or {}), **item}
            fields = shop_fields(source / "catalog.jsonl", None, values)
            item.update(zip(SHOP_FIELDS, fields, strict=True))
        return info, SET_ATTRIBUTES
    items = read_catalog(source)
    info = {
        item.id: {
            "title": item.title,
            "attributes": item.attributes,
            "price": item.price,
            "brand": item.brand,
            "in_stock": item.in_stock,
        }
        for item in items
    }
    return info, None


def _products(
    rows: list[CatalogRow],
    vectors: Vectors,
    info: dict[str, dict[str, Any]],
    root: Path,
    keep: tuple[str, ...] | None = SET_ATTRIBUTES,
) -> Iterator[tuple[Product, np.ndarray]]:
    """Each product and its views' vectors, one at a time (gathered when asked for)."""
    by_product: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_product[row.product].append(i)
    for product_id, indices in by_product.items():
        first = rows[indices[0]]
        extra = info.get(product_id, {})
        attributes = {  # the shop fields are the product's own fields, not attributes
            k: v
            for k, v in (extra.get("attributes") or {}).items()
            if (keep is None or k in keep) and k not in SHOP_FIELDS
        }
        images = tuple(_relative(rows[i].image, root) for i in indices)
        product = Product(
            product_id,
            first.category,
            str(extra.get("title", "")),
            images,
            attributes,
            price=extra.get("price"),
            brand=extra.get("brand"),
            in_stock=extra.get("in_stock"),
        )
        yield product, vectors[indices]


def _relative(image: str, root: Path) -> str:
    try:
        return str(Path(image).resolve().relative_to(root.resolve()))
    except ValueError:
        return image


def _embed(
    source: Path, embedder: Embedder, out: Path, embeddings: Path | None
) -> tuple[Vectors, list[CatalogRow], dict[str, Any]]:
    """(vectors, rows, {model, fingerprint, dim, skipped}) of every readable catalog view: in
    memory, or memory-mapped from the job's shards in `embeddings` (by default `OUT.embeddings`
    for a catalog of more than `STREAM_VIEWS` views, too large to embed in memory)."""
    rows = catalog_rows(source) if embeddings is None else []
    if embeddings is None and len(rows) > STREAM_VIEWS:
        embeddings = out.with_name(f"{out.name}.embeddings")
        log.info("%d catalog views: embedding into resumable shards in %s", len(rows), embeddings)
    if embeddings is not None:
        run_embed_job(source, embedder, embeddings)
        return open_shards(embeddings)
    settings = PipelineSettings(desc="embed catalog", progress=True)
    vectors, kept, skipped = embed_catalog(rows, embedder, settings)
    model = {"model": embedder.name, "fingerprint": embedder_fingerprint(embedder)}
    return vectors, kept, {**model, "dim": embedder.dim, "skipped": skipped}


def fit_reduction(vectors: Vectors, rows: list[CatalogRow], dim: int) -> PCA | None:
    """The PCA to `dim` fitted on the rows in vector-id (photo id) order, as the evaluation
    fits it (the same vectors give the same PCA, so eval measures what the index serves); only
    the rows `fit_pca` would sample are gathered (`sample_rows`), so shards stay on disk."""
    order = np.argsort([row.vector_id for row in rows], kind="stable")
    return reduction(vectors[order[sample_rows(len(order))]], dim)


def build_index(
    source: str | Path,
    embedder: Embedder,
    out: str | Path,
    dim: int = 512,
    embeddings: str | Path | None = None,
    precompute_k: int = PRECOMPUTE_K,
) -> dict[str, Any]:
    """Embed every catalog view of `source`, fit a PCA to `dim`, and write a complete index.

    `embeddings`: a folder for the feature-vector job's shards (resumable; kept afterwards);
    None embeds in memory and writes no shards.
    """
    source, out = Path(source), Path(out)
    vectors, rows, manifest = _embed(
        source, embedder, out, Path(embeddings) if embeddings else None
    )
    if not rows:
        raise ValueError(f"{source}: the catalog has no readable images; nothing to index")
    pca = fit_reduction(vectors, rows, dim)
    staging = staging_folder(out)
    root = source if source.is_dir() else source.parent
    info, keep = _side_info(source)
    items = _products(rows, vectors, info, root, keep)
    products = len({row.product for row in rows})
    written = write_index(staging, items, manifest, pca, precompute_k, total=products)
    summary = {
        **written,
        "model": manifest["model"],
        "skipped": len(manifest["skipped"]),
        "catalog_root": str(root.resolve()),  # image refs are relative to it: a folder
        "precompute_k": precompute_k,
        "skipped_images": manifest["skipped"],  # [{"image", "error"}]: what to fix, and why
    }
    (staging / "build.json").write_text(json.dumps(summary, indent=2))
    replace_folder(staging, out)
    return summary


def reduction(vectors: np.ndarray, dim: int) -> PCA | None:
    """The PCA to `dim` fitted on `vectors`; None (full dimension) if `dim` is 0 or not below."""
    return fit_pca(vectors, dim=dim) if dim and dim < vectors.shape[1] else None


def write_index(
    folder: Path,
    items: Iterable[tuple[Product, np.ndarray]],
    model: dict[str, Any],
    pca: PCA | None,
    precompute_k: int = PRECOMPUTE_K,
    settings: StoreSettings | None = None,
    total: int | None = None,
    store: StoreChoice | None = None,
) -> dict[str, int]:
    """A new index in `folder` (a staging folder: no write-ahead log, one final snapshot) holding
    `items` (products and their view embeddings, taken `INGEST_BATCH` at a time; `total` of
    them, for the progress bar) of `model` ({model, fingerprint, dim}), with `precompute_k`
    recommendations a product, in the vector store `store` names (default: the ``VISNET_STORE``
    settings). Returns its counts and vector dimension."""
    index = CatalogIndex.create(
        folder,
        model_fingerprint=model["fingerprint"],
        model_name=model["model"],
        embedding_dim=int(model["dim"]),
        pca=pca,
        settings=replace(settings or StoreSettings(), log_writes=False),
        store=store,
    )
    try:
        products = iter(items)
        with tqdm(total=total, desc="index", unit="product") as bar:
            while batch := list(islice(products, INGEST_BATCH)):
                index.upsert_many(batch)
                bar.update(len(batch))
        precomputed = index.precompute_similar(k=precompute_k) if precompute_k else 0
        index.snapshot()
        return {
            "products": index.count(),
            "vectors": index.store.count(),
            "precomputed": precomputed,
            "dim": int(index.manifest["vector_dim"]),
        }
    except BaseException:
        discard_store(index.store)  # a Milvus collection outlives the staging folder
        raise
    finally:
        index.close()
