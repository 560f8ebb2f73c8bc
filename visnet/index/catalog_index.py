"""The catalog index: products (SQLite), their view vectors (a store), PCA, model identity."""

from __future__ import annotations

import json
import logging
import shlex
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from visnet.index.duplicates import DUPLICATE_THRESHOLD
from visnet.index.embedded import StoreSettings
from visnet.index.look_alikes import (
    PROGRESS_META,
    THRESHOLD_META,
    Hit,
    LookAlikes,
    look_alikes_of,
    precompute_lists,
    top_products,
)
from visnet.index.pca import PCA, l2_normalise
from visnet.index.products import Facets, Product, ProductFilter, ProductStore
from visnet.index.protocol import IndexMismatchError, VectorStore
from visnet.index.stores import StoreChoice, discard_store, open_store, store_manifest
from visnet.io import write_json_atomic

__all__ = ["CatalogIndex", "Hit", "LookAlikes"]

log = logging.getLogger(__name__)

FORMAT, VERSION = "visnet-index", 1
MANIFEST = "manifest.json"
# A filter that at most this many vectors pass is searched exactly over them (one matrix
# product, about 5 ms for 20,000 512-D vectors); a wider one by the store's own search, widened
# until k products that pass come back (it passes a share of at least this over the catalog)
FILTER_EXACT_LIMIT = 20_000


def _let_go(store: VectorStore, created: bool) -> None:
    """Release the store of an index that failed to open: a store just made (a new Milvus
    collection) is discarded, one that was there is closed; the first error stays the one raised."""
    try:
        if created:
            discard_store(store)
        else:
            store.close()
    except Exception:
        log.exception("could not release the vector store of an index that failed to open")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _mismatch(
    path: Path, what: str, expected: str, given: str, fix: str | None = None
) -> IndexMismatchError:
    fix = fix or "rebuild the index (re-embed the catalog) for the new one"
    return IndexMismatchError(
        f"index {path} was built with {what} {expected}; got {given}. Open it with the same "
        f"{what}, or {fix}"
    )


def _rebuild_command(path: Path, model: str | None) -> str:
    """The fix for another model's index: `visnet index rebuild` re-embeds its own images."""
    index, name = shlex.quote(str(path)), shlex.quote(model) if model else "MODEL"
    return f"rebuild it for this model with: visnet index rebuild --index {index} --model {name}"


def check_model(path: Path, model_fingerprint: str, model: str | None = None) -> dict[str, Any]:
    """The index's manifest, if the index at `path` was built by the model with this fingerprint;
    else FileNotFoundError (no index) or IndexMismatchError naming the command that rebuilds it.
    Cheap (no lock, no vectors), so a command can check before it loads anything else."""
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(f"{path} holds no index ({MANIFEST} missing); create one first")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest["model_fingerprint"] != model_fingerprint:
        expected = f"{manifest['model_name']!r} (fingerprint {manifest['model_fingerprint']})"
        given = f"fingerprint {model_fingerprint}"
        raise _mismatch(path, "model", expected, given, _rebuild_command(path, model))
    return manifest


class CatalogIndex:
    """Products and their view vectors, searchable by vector or by product. Thread-safe.

    Folder layout::

        manifest.json      model name and fingerprint, dims, PCA fingerprint, store settings, counts
        pca.npy            the PCA (absent when vectors are indexed at the model's own dimension)
        products.sqlite    products, vector id -> product id, pending vector ids, recommendations
        vectors/           the embedded vector store (snapshot + write-ahead log), or none: the
                           manifest names the Milvus collection that holds them (`stores.py`)

    A product write touches two stores, ordered so that a crash between any two steps is repaired at
    the next open: reserve fresh vector ids (recorded as pending) -> upsert them into the vector
    store -> commit the product and its new ids in SQLite (the commit point; the replaced ids become
    pending) -> delete the replaced ids from the vector store -> clear them from pending. Opening
    deletes every pending id from the vector store. Searches skip vector ids that no product owns,
    so a write in progress is never half-visible.

    ``duplicate_threshold``: the listing similarity from which results are one picture listed
    under several ids, shown once (``visnet.index.duplicates``); None shows every product.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict,
        store: VectorStore,
        products: ProductStore,
        pca: PCA | None,
        duplicate_threshold: float | None = DUPLICATE_THRESHOLD,
    ) -> None:
        """Use ``create``, ``open`` or ``open_or_create``."""
        self.path, self.manifest = path, manifest
        self.store, self.products, self.pca = store, products, pca
        self.duplicate_threshold = duplicate_threshold
        self._write_lock = threading.Lock()
        self._reconcile()

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        model_fingerprint: str,
        model_name: str,
        embedding_dim: int,
        pca: PCA | None = None,
        settings: StoreSettings | None = None,
        duplicate_threshold: float | None = DUPLICATE_THRESHOLD,
        store: StoreChoice | None = None,
    ) -> CatalogIndex:
        """Make a new, empty index folder for vectors of one model (and PCA), in the store
        ``store`` names (default: from the ``VISNET_STORE*`` variables, `visnet.index.stores`)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise FileExistsError(f"{path} already holds an index; use CatalogIndex.open")
        if pca is not None and pca.in_dim != embedding_dim:
            raise ValueError(f"PCA takes {pca.in_dim}-D input; the model gives {embedding_dim}-D")
        settings, choice = settings or StoreSettings(), store or StoreChoice()
        path.mkdir(parents=True, exist_ok=True)
        if pca is not None:
            pca.save(path)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model_name": model_name,
            "model_fingerprint": model_fingerprint,
            "embedding_dim": embedding_dim,
            "pca": {"fingerprint": pca.fingerprint, "dim": pca.out_dim} if pca else None,
            "vector_dim": pca.out_dim if pca else embedding_dim,
            "store": store_manifest(choice, settings),
            "counts": {},
            "created": _now(),
            "updated": _now(),
        }
        index = cls._assemble(path, manifest, settings, duplicate_threshold, choice, create=True)
        index._write_manifest()
        return index

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        model_fingerprint: str,
        pca_fingerprint: str | None = None,
        settings: StoreSettings | None = None,
        model: str | None = None,
        duplicate_threshold: float | None = DUPLICATE_THRESHOLD,
        store: StoreChoice | None = None,
    ) -> CatalogIndex:
        """Open an index folder, refusing one built by another model or (if given) PCA.

        ``model``: the model as the caller names it (a checkpoint path, a baseline name); the
        refusal of another model's index names the command that rebuilds the index for it.
        """
        path = Path(path)
        manifest = check_model(path, model_fingerprint, model)
        saved = (manifest["pca"] or {}).get("fingerprint")
        if pca_fingerprint is not None and saved != pca_fingerprint:
            expected = f"fingerprint {saved}" if saved else "none (full-dimension vectors)"
            raise _mismatch(path, "PCA", expected, f"fingerprint {pca_fingerprint}")
        return cls._assemble(path, manifest, settings, duplicate_threshold, store)

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        *,
        model_fingerprint: str,
        model_name: str,
        embedding_dim: int,
        pca: PCA | None = None,
        settings: StoreSettings | None = None,
        store: StoreChoice | None = None,
    ) -> CatalogIndex:
        """``open`` (checking the model and the given PCA) if the folder holds an index, else
        ``create``."""
        if (Path(path) / MANIFEST).exists():
            fingerprint = pca.fingerprint if pca is not None else None
            return cls.open(
                path,
                model_fingerprint=model_fingerprint,
                pca_fingerprint=fingerprint,
                settings=settings,
                store=store,
            )
        return cls.create(
            path,
            model_fingerprint=model_fingerprint,
            model_name=model_name,
            embedding_dim=embedding_dim,
            pca=pca,
            settings=settings,
            store=store,
        )

    @classmethod
    def _assemble(
        cls,
        path: Path,
        manifest: dict,
        settings: StoreSettings | None,
        duplicate_threshold: float | None = DUPLICATE_THRESHOLD,
        choice: StoreChoice | None = None,
        create: bool = False,
    ) -> CatalogIndex:
        pca = PCA.load(path) if manifest["pca"] else None
        if pca is not None and pca.fingerprint != manifest["pca"]["fingerprint"]:
            raise _mismatch(
                path,
                "PCA",
                manifest["pca"]["fingerprint"],
                f"{pca.fingerprint} in pca.npy (the file was changed)",
            )
        choice = choice or StoreChoice()
        store = open_store(path / "vectors", manifest, choice, settings, create)
        try:
            products = ProductStore(path / "products.sqlite")
        except BaseException:
            _let_go(store, create)
            raise
        try:
            return cls(path, manifest, store, products, pca, duplicate_threshold)
        except BaseException:  # reconciling the two failed
            products.close()
            _let_go(store, create)
            raise

    def _reconcile(self) -> None:
        pending = self.products.pending_vector_ids()
        if len(pending):
            log.info("removing %d vectors of writes interrupted earlier", len(pending))
            self.store.delete(pending)
            self.products.clear_pending(pending)
        owned, held = self.products.vector_count(), self.store.count()
        if owned != held:
            log.warning(
                "index %s: products own %d vectors but the store holds %d", self.path, owned, held
            )

    # ---- writes ----------------------------------------------------------------------------

    def prepare(self, embeddings: np.ndarray) -> np.ndarray:
        """Model embeddings (n, embedding_dim) -> the indexed vectors (PCA, unit norm)."""
        x = np.asarray(embeddings, dtype=np.float32)
        dim = self.manifest["embedding_dim"]
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"embeddings must have shape (n, {dim}); got {x.shape}")
        return self.pca.apply(x) if self.pca is not None else l2_normalise(x)

    def upsert(self, product: Product, embeddings: np.ndarray | None) -> None:
        """Add or replace a product and its view embeddings (None keeps the current views)."""
        self.upsert_many([(product, embeddings)])

    def upsert_many(self, items: Iterable[tuple[Product, np.ndarray | None]]) -> None:
        """Add or replace products in one batch: one log record, two SQLite transactions."""
        items = list(items)
        if not items:
            return
        with self._write_lock:
            views = [self._views(product, emb) for product, emb in items]
            ids = self.products.reserve_vector_ids(sum(len(v) for v in views))
            cats = [
                p.category for (p, _), v in zip(items, views, strict=True) for _ in range(len(v))
            ]
            self.store.upsert(ids, np.concatenate(views), cats)
            bounds = np.cumsum([0, *(len(v) for v in views)])
            owned = [
                (p, ids[a:b]) for (p, _), a, b in zip(items, bounds[:-1], bounds[1:], strict=True)
            ]
            replaced = self.products.upsert_many(owned)
            self.store.delete(replaced)
            self.products.clear_pending(replaced)

    def _views(self, product: Product, embeddings: np.ndarray | None) -> np.ndarray:
        if embeddings is not None:
            views = self.prepare(embeddings)
        else:  # metadata-only change: re-file the current views (the category may have moved)
            views = self.store.get(self.products.vector_ids(product.id))
        if not len(views):
            raise ValueError(f"product {product.id!r} needs at least one view embedding")
        return views

    def delete(self, product_id: str) -> None:
        """Remove a product and its vectors; ``UnknownProductError`` if there is none."""
        with self._write_lock:
            replaced = self.products.delete(product_id)
            self.store.delete(replaced)
            self.products.clear_pending(replaced)

    # ---- reads -----------------------------------------------------------------------------

    def get(self, product_id: str) -> Product:
        """The product; ``UnknownProductError`` if there is none."""
        return self.products.get(product_id)

    def __contains__(self, product_id: object) -> bool:
        """Whether the catalog holds a product with this id."""
        return product_id in self.products

    def image_refs(self, prefix: str) -> set[str]:
        """Every product's image refs that start with ``prefix`` (``index:uploads/``: uploads)."""
        return self.products.image_refs(prefix)

    def page(self, category: str | None = None, after: str = "", limit: int = 50) -> list[Product]:
        """Up to ``limit`` products with ids after ``after`` in id order, optionally of one
        category (an unknown one: none); page on by passing the last id as ``after``."""
        return self.products.page(category, after, limit)

    def count(self) -> int:
        """Number of products."""
        return self.products.count()

    def category_counts(self) -> dict[str, int]:
        """Category -> number of products, for every category that holds one (sorted)."""
        return {c: self.products.count(c) for c in self.products.categories()}

    def facets(self) -> Facets:
        """What the products can be filtered on: brands, priced and stocked counts."""
        return self.products.facets()

    def search(
        self,
        embedding: np.ndarray,
        k: int = 20,
        category: str | None = None,
        filters: ProductFilter | None = None,
    ) -> list[Hit]:
        """The k products whose views best match one query embedding, optionally in a category
        and passing ``filters``, near-duplicate listings collapsed."""
        query = self.prepare(np.asarray(embedding, dtype=np.float32).reshape(1, -1))
        return top_products(self, [query], k, category, [None], filters, FILTER_EXACT_LIMIT)[0][0]

    def similar(
        self,
        product_id: str,
        k: int = 20,
        same_category: bool = True,
        filters: ProductFilter | None = None,
    ) -> list[Hit]:
        """The k products most like this one (best pair of views), itself excluded."""
        return self.look_alikes(product_id, k, same_category, filters).hits

    def look_alikes(
        self,
        product_id: str,
        k: int = 20,
        same_category: bool = True,
        filters: ProductFilter | None = None,
    ) -> LookAlikes:
        """``similar``, and the product's own other listings, which its look-alikes leave out."""
        return look_alikes_of(self, product_id, k, same_category, filters, FILTER_EXACT_LIMIT)

    def precompute_similar(
        self,
        k: int = 20,
        same_category: bool = True,
        batch: int = 1024,
        progress: bool = False,
        resume: bool = True,
        workers: int = 2,
    ) -> int:
        """Compute and store every product's ``similar`` list (and its own other listings),
        ``batch`` products at a time on ``workers`` threads, continuing an interrupted run unless
        ``resume=False``; returns the number of products
        (`visnet.index.look_alikes.precompute_lists`)."""
        return precompute_lists(self, k, same_category, batch, progress, resume, workers)

    def recommendations_current(self) -> bool:
        """Whether the stored lists, if any, were made with this index's ``duplicate_threshold``
        (lists stored before near-duplicates were collapsed were not). A precomputation still
        under way (or stopped, to be resumed) that no finished one preceded counts by its own
        threshold: its lists are served, the products it has not reached yet are answered live."""
        made = self.products.get_meta(THRESHOLD_META)
        if made == json.dumps(self.duplicate_threshold) or not self.products.has_recommendations():
            return True
        running = json.loads(self.products.get_meta(PROGRESS_META) or "null")
        return (
            made is None and bool(running) and running.get("threshold") == self.duplicate_threshold
        )

    def recommendations(self, product_id: str) -> list[Hit]:
        """The precomputed ``similar`` list (products deleted since are left out)."""
        self.products.get(product_id)
        return [Hit(p, s) for p, s in self.products.recommendations(product_id)]

    def recommendation_rows(self, product_id: str) -> tuple[list[tuple], list[str]] | None:
        """The precomputed ``similar`` list with what a result shows, in one indexed read: rows
        ``(id, category, title, image count, score, price, brand, in stock, duplicates)``,
        products deleted since left out, and the product's own other listings; ``([], [])``
        when none is stored (an unknown product included); None when a deletion changed what
        the list would be (``ProductStore.recommended_rows``)."""
        return self.products.recommended_rows(product_id)

    # ---- persistence -----------------------------------------------------------------------

    def _write_manifest(self) -> None:
        store: Any = self.store
        counts = {"products": self.products.count(), "vectors": self.store.count()}
        if hasattr(store, "counts"):
            counts["per_category"] = store.counts()
            self.manifest["store"]["partitions"] = store.kinds()
        self.manifest.update(counts=counts, updated=_now())
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def snapshot(self) -> None:
        """Snapshot the vector store (empties its log) and refresh the manifest's counts."""
        with self._write_lock:
            self.store.snapshot()
            self._write_manifest()

    def close(self) -> None:
        """Close the stores (writes are already durable; no snapshot is taken)."""
        with self._write_lock:
            self.store.close()
            self.products.close()
