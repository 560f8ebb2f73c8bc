"""Rebuild an index for another model from its own images: read -> re-embed -> write -> swap.

Every product keeps its record (id, category, title, image refs, attributes); its views are re-
embedded from the files its refs name (`visnet.index.refs`: catalog images under the catalog
root that `build.json` records, uploads under the index folder's `uploads/`). What else the
folder keeps (uploads, the shoppers' event log, search crops, sample photos) is copied over. The
PCA is refitted at the old index's dimension and the recommendations recomputed.

The new index is written to `OUT.partial` and moved into place only when complete. Rebuilt in
place, the old folder stays beside the new one as `INDEX.before-rebuild`, to delete once the new
index serves well. The old index stays open (locked) while the rebuild reads it, so a server
cannot write to it meanwhile. A product none of whose images can be read is skipped and
reported, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from visnet.embed.pipeline import Item, PipelineSettings, Skipped, embed_items
from visnet.embed.registry import embedder_fingerprint
from visnet.features.base import Embedder
from visnet.index.build import PRECOMPUTE_K, reduction, write_index
from visnet.index.catalog_index import MANIFEST, CatalogIndex
from visnet.index.embedded import EmbeddedStore, StoreSettings
from visnet.index.products import Product
from visnet.index.refs import UPLOAD_PREFIX, UPLOADS, product_image, recorded_catalog_root
from visnet.index.stores import StoreChoice, engine_of
from visnet.io import replace_folder, staging_folder

__all__ = ["BEFORE_REBUILD", "rebuild_index", "reembed"]

log = logging.getLogger(__name__)

BEFORE_REBUILD = ".before-rebuild"  # suffix of the old folder kept after an in-place rebuild
BUILD_FILE = "build.json"


def rebuild_index(
    index: str | Path,
    embedder: Embedder,
    out: str | Path | None = None,
    catalog_root: str | Path | None = None,
    dim: int | None = None,
    precompute_k: int | None = None,
) -> dict[str, Any]:
    """Re-embed every product of the index folder `index` with `embedder` into a new index.

    `out`: where the new index goes (default: `index` itself, the old one moved to
    `INDEX.before-rebuild`); `catalog_root`: where catalog image refs point (default: the
    index's `build.json`); `dim`: the PCA dimension (default: the old index's, 0 for the full
    embedding); `precompute_k`: recommendations a product (default: the old build's).
    Returns the summary `visnet index build` gives, with the skipped products named, the new
    index's folder (`index`) and the old one's if it was moved (`previous`).
    """
    index = Path(index).resolve()  # resolved: `.` has no name to put a suffix on
    target = Path(out).resolve() if out is not None else index
    previous = index.with_name(index.name + BEFORE_REBUILD) if target == index else None
    _check_free(target, previous)
    build = _read_json(index / BUILD_FILE)
    root = Path(catalog_root) if catalog_root else recorded_catalog_root(index)
    fingerprint = _read_manifest(index)["model_fingerprint"]
    old = CatalogIndex.open(index, model_fingerprint=fingerprint, store=StoreChoice().reading())
    try:
        staging = staging_folder(target)
        try:
            summary = _rebuild(old, build, embedder, staging, root, dim, precompute_k)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        old.close()
    _swap(staging, target, previous)
    return {**summary, "index": str(target), "previous": str(previous) if previous else None}


def _rebuild(
    old: CatalogIndex,
    build: dict[str, Any],
    embedder: Embedder,
    staging: Path,
    root: Path | None,
    dim: int | None,
    precompute_k: int | None,
) -> dict[str, Any]:
    """Re-embed `old`'s products and write the complete new index (and its build.json) to
    `staging`; returns its summary."""
    products = old.products.list_products()
    _check_root(old.path, root, products)
    items, dropped, skipped = reembed(products, embedder, root, old.path)
    if not items:
        raise ValueError(
            f"{old.path}: none of its {len(products)} products has a readable image (catalog "
            f"root {root}, uploads in {old.path / UPLOADS}); nothing to rebuild"
        )
    _report(dropped, len(products))
    fingerprint = embedder_fingerprint(embedder)
    model = {"model": embedder.name, "fingerprint": fingerprint, "dim": embedder.dim}
    dim = _old_dim(old) if dim is None else dim
    pca = reduction(np.concatenate([vectors for _, vectors in items]), dim)
    k = _precompute_k(build) if precompute_k is None else precompute_k
    written = write_index(
        staging, items, model, pca, k, _store_settings(old), len(items), _store_choice(old)
    )
    _carry_over(old.path, staging)
    summary = {
        **written,
        "model": embedder.name,
        "skipped": len(skipped),
        "skipped_products": dropped,
        "catalog_root": str(root.resolve()) if root else None,
        "precompute_k": k,
        "rebuilt_from": {key: old.manifest[key] for key in ("model_name", "model_fingerprint")},
    }
    (staging / BUILD_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def reembed(
    products: list[Product], embedder: Embedder, catalog_root: Path | None, index_dir: Path
) -> tuple[list[tuple[Product, np.ndarray]], list[str], list[Skipped]]:
    """Every view of `products` through the embedding pipeline, from the files their refs name:
    (product and its readable views' embeddings, ids of products with none, images skipped).

    A product keeps its record as it is, every ref included, also when some of its images are
    unreadable now; it is indexed by the views that could be read.
    """
    items = [
        Item((n, view), product_image(ref, catalog_root, index_dir))
        for n, product in enumerate(products)
        for view, ref in enumerate(product.images)
    ]
    done = embed_items(items, embedder, PipelineSettings(desc="re-embed", progress=True))
    vectors = done.single()
    rows: dict[int, list[int]] = defaultdict(list)
    for row, (n, _) in enumerate(done.keys):
        rows[n].append(row)
    kept = [(product, vectors[rows[n]]) for n, product in enumerate(products) if rows[n]]
    dropped = [product.id for n, product in enumerate(products) if not rows[n]]
    return kept, dropped, done.skipped


def _report(dropped: list[str], total: int) -> None:
    if dropped:
        shown = ", ".join(dropped[:10]) + (", ..." if len(dropped) > 10 else "")
        log.warning(
            "skipped %d of %d products: none of their images could be read (%s)",
            len(dropped),
            total,
            shown,
        )


# ---- what the old index says -----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_manifest(index: Path) -> dict[str, Any]:
    if not (index / MANIFEST).is_file():
        raise FileNotFoundError(f"{index} holds no index ({MANIFEST} missing); nothing to rebuild")
    return _read_json(index / MANIFEST)


# what an index folder holds that belongs to the old index only (the new build wrote its own):
# the service's record of stale recommendation lists, and SQLite's side files
# (and a Milvus Lite file, whose new collection the new index's manifest names where it is)
NOT_CARRIED = ("service-state.json", "*.lock", "*-wal", "*-shm", "*-journal", "*.db")


def _carry_over(old: Path, staging: Path) -> None:
    """Everything else the old folder keeps goes to the new one: uploaded images (`uploads/`),
    and what the service and commands keep beside an index (the shoppers' event log, the
    search crops for feedback triplets, the sample photos). An SQLite file is copied through
    SQLite's backup, so what its write-ahead log holds comes along."""
    for entry in sorted(old.iterdir()):
        if (staging / entry.name).exists() or any(entry.match(p) for p in NOT_CARRIED):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        elif entry.suffix == ".sqlite":
            source, target = sqlite3.connect(entry), sqlite3.connect(staging / entry.name)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
        else:
            shutil.copy2(entry, staging / entry.name)


def _check_root(index: Path, root: Path | None, products: list[Product]) -> None:
    """Catalog refs need the catalog root; an index of uploads only does not."""
    if not any(not ref.startswith(UPLOAD_PREFIX) for p in products for ref in p.images):
        return
    if root is None or not root.is_dir():
        found = f"{root} is not a folder" if root else f"{index / BUILD_FILE} records none"
        raise FileNotFoundError(
            f"{index}: catalog image refs are relative to the catalog root, and {found}; pass "
            "--catalog-root (the folder the index was built from)"
        )


def _old_dim(old: CatalogIndex) -> int:
    """The old PCA's dimension; 0 (full dimension) if the old index kept the model's."""
    return int((old.manifest["pca"] or {}).get("dim", 0))


def _precompute_k(build: dict[str, Any]) -> int:
    """The old build's recommendations a product; 0 if it stored none; else the default."""
    if "precompute_k" in build:
        return int(build["precompute_k"])
    return 0 if build.get("precomputed") == 0 else PRECOMPUTE_K


def _store_settings(old: CatalogIndex) -> StoreSettings:
    return old.store.settings if isinstance(old.store, EmbeddedStore) else StoreSettings()


def _store_choice(old: CatalogIndex) -> StoreChoice:
    """Where the new index's vectors go: the store ``VISNET_STORE`` names when it is set (a
    rebuild can move an index between stores), else the old index's kind: a Milvus index gets a
    new collection on the same Milvus (the URI and token from the environment, as ever, the URI
    defaulting to the old one's) with the old one's index settings. The old collection stays
    with the old folder."""
    env = StoreChoice()
    saved = old.manifest["store"]
    if "store" in env.model_fields_set or engine_of(saved) != "milvus":
        return env if "store" in env.model_fields_set else StoreChoice(store="embedded")
    return StoreChoice(
        store="milvus",
        milvus_uri=env.milvus_uri or saved.get("uri"),
        milvus_token=env.milvus_token,
        milvus_index=saved.get("index_type"),
        milvus_index_params=saved.get("index_params") or {},
        milvus_search_params=saved.get("search_params") or {},
        milvus_partition_key=saved.get("partition_key"),
        milvus_replicas=env.milvus_replicas,
    )


# ---- where the new index goes ----------------------------------------------------------------


def _check_free(target: Path, previous: Path | None) -> None:
    """Refuse before any work rather than overwrite a kept old index or another folder."""
    if previous is not None and previous.exists():
        raise FileExistsError(
            f"{previous} exists (the old index of an earlier rebuild); delete or move it first"
        )
    if previous is None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists; pass a new folder as --out, or delete it")


def _swap(staging: Path, target: Path, previous: Path | None) -> None:
    """Move the complete new index into place; in place, the old folder to `previous` first
    (a crash between the two renames leaves the old index in `previous`, the new in `staging`)."""
    if previous is not None:
        os.replace(target, previous)
    replace_folder(staging, target)  # removes an empty `target` (checked before)
