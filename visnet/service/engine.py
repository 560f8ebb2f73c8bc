"""The service's work, without HTTP: decode -> detect -> embed -> search, similar, writes.

It answers in domain objects (`answers.py`, `Product`) and reaches the index only through
`CatalogIndex`'s methods; the routes turn its answers into the API's shapes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from visnet.embed.registry import create_embedder, embedder_fingerprint
from visnet.features.base import Embedder
from visnet.feedback.event_log import EventLog
from visnet.feedback.event_schema import BatchResult, fingerprint_token
from visnet.feedback.queries import QueryCropWriter
from visnet.images import DecodedImage, ImageLimits, decode_image
from visnet.index.catalog_index import CatalogIndex, Hit
from visnet.index.products import Facets, Product, ProductFilter
from visnet.index.refs import product_image, recorded_catalog_root
from visnet.service import files
from visnet.service.answers import (
    Match,
    ObjectResults,
    ProductPage,
    SearchObject,
    SearchResults,
    Similar,
)
from visnet.service.freshness import Recommendations
from visnet.service.metrics import Metrics
from visnet.service.settings import UNCALIBRATED_CATEGORY_THRESHOLD, ServiceSettings
from visnet.service.slots import SEARCH, WRITE, ModelSlots

__all__ = ["Engine", "LruCache", "load_embedder"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PRUNE_EVERY = 1000  # search crops written between two prunings of the folder


class LruCache:
    """A small thread-safe LRU map; ``clear`` on every catalog write keeps it correct."""

    def __init__(self, size: int) -> None:
        self.size, self._items, self._lock = size, OrderedDict[Hashable, Any](), threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.size < 1:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def load_embedder(model: str) -> tuple[Embedder, str]:
    """The embedder for any model name `create_embedder` takes, and its fingerprint (what the
    index manifest holds). Queries run on onnxruntime, as the catalog was embedded."""
    embedder = create_embedder(model, backend="auto", batch_size=8)
    return embedder, embedder_fingerprint(embedder)


def _limit_threads(threads: int) -> None:
    """Cap torch's and BLAS's thread pools for the whole process.

    A request is one image and one query vector: more threads save little, and on a busy machine
    their spinning barriers cost a lot (measured on 2 shared cores: a 1x256 @ 256x2000 product
    8 ms with two OpenBLAS threads, 0.03 ms with one; a small CNN forward 700 ms against 16 ms).
    """
    if threads < 1:
        return
    torch = sys.modules.get("torch")  # loaded by a model or detector; baselines never need it
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        log.warning("threadpoolctl is missing; BLAS keeps its default thread count")
        return
    threadpool_limits(limits=threads, user_api="blas")


def _return_large_frees() -> None:
    """Make glibc give large freed buffers (decoded images) back to the kernel at once.

    Its default raises the mmap threshold after each large free, so later images land in
    per-thread heaps that keep their pages: measured on four 6300x6300 PNGs decoded one at a
    time on four threads, 546 MB peak RSS by default, 194 MB with a fixed 4 MiB threshold.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def category_threshold(settings: ServiceSettings, detector: Any | None) -> float:
    """The label score from which a detected category filters a search: the setting when given,
    else the detector's calibrated threshold, else the uncalibrated default."""
    if settings.category_threshold is not None:
        return settings.category_threshold
    calibrated = getattr(getattr(detector, "config", None), "category_threshold", None)
    return UNCALIBRATED_CATEGORY_THRESHOLD if calibrated is None else float(calibrated)


def _catalog_root(settings: ServiceSettings) -> Path | None:
    if settings.catalog_root is not None:
        return settings.catalog_root
    return recorded_catalog_root(settings.index)


def index_token(manifest: dict[str, Any]) -> str:
    """A short id of one index build (its creation time, model and PCA), the same in every copy
    of the folder: a replica serving a rebuilt index names another."""
    pca = (manifest.get("pca") or {}).get("fingerprint")
    built = json.dumps([manifest.get("created"), manifest.get("model_fingerprint"), pca])
    return f"index:{hashlib.sha256(built.encode()).hexdigest()[:16]}"


def open_event_log(settings: ServiceSettings) -> EventLog | None:
    """The shopper event log; None (events refused, searches served) when it cannot be opened,
    say in a read-only index folder."""
    path = settings.events_path
    try:
        return EventLog(
            path, timeout=settings.events_lock_timeout, max_bytes=settings.events_max_bytes
        )
    except (OSError, sqlite3.Error) as exc:
        log.warning("no shopper events: cannot open %s: %s", path, exc)
        return None


def _scaled(box: Any, sx: float, sy: float) -> tuple[float, ...]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


class Engine:
    """Loaded model, index and optional detector, and every operation the routes call.

    Thread-safe: routes call it from the thread pool. At most ``model_workers`` model calls run at
    once, each on ``compute_threads`` threads (see ``_limit_threads``); waiting searches go before
    waiting writes, and past ``model_queue`` waiting calls a new one is refused (`slots.py`);
    index reads run concurrently.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        embedder: Embedder,
        index: CatalogIndex,
        detector: Any | None,
        metrics: Metrics,
    ) -> None:
        self.settings, self.embedder, self.index = settings, embedder, index
        self.detector, self.metrics = detector, metrics
        self.category_threshold = category_threshold(settings, detector)
        self.catalog_root = _catalog_root(settings)
        # The shrink to max_image_side applies only above 2048 px, a size the catalog path
        # (`visnet index build`, eval: full-size decodes) does not reach for the demo set (largest
        # side 510 px): for such images the same bytes give the same pixels here and there.
        self.limits = ImageLimits(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_decode_bytes=settings.max_decode_bytes,
            max_aspect=settings.max_aspect_ratio,
            max_side=settings.max_image_side,
        )
        self._decode_slots = threading.BoundedSemaphore(settings.decode_workers)
        self.recommendations = Recommendations(
            index, settings.precompute_k, settings.refresh_after_s
        )
        self.similar_cache = LruCache(settings.similar_cache_size)
        self.products = LruCache(settings.product_cache_size)
        # searches before writes, each search's detection and embedding in one turn, at most
        # model_queue calls waiting (benchmarks/soak.py --compare measured why)
        self._model_slots = ModelSlots(settings.model_workers, settings.model_queue)
        self._write_lock = threading.Lock()
        self._categories: dict[str, int] | None = None
        self._facets: Facets | None = None
        # what ranked an answer, as the page's impressions name it (`visnet.feedback.event_schema`)
        self.model_token = fingerprint_token(embedder_fingerprint(embedder), embedder.name)
        self.index_token = index_token(index.manifest)
        self.events = open_event_log(settings)
        self.crops = self._crop_writer()  # search crops, written on a thread of their own

    @classmethod
    def load(cls, settings: ServiceSettings, metrics: Metrics) -> Engine:
        """Load the model, open the index (refusing another model's), load the detector if set."""
        start = time.perf_counter()
        embedder, fingerprint = load_embedder(settings.model)
        detector = None
        if settings.detector is not None:
            from visnet.detect import Detector

            detector = Detector.load(settings.detector)
        _limit_threads(settings.compute_threads)
        _return_large_frees()
        index = CatalogIndex.open(  # takes the lock; another model's index is refused
            settings.index,
            model_fingerprint=fingerprint,
            model=settings.model,
            duplicate_threshold=settings.duplicate_threshold,
        )
        engine = cls(settings, embedder, index, detector, metrics)
        if not index.recommendations_current():
            log.info(
                "the stored recommendation lists were made with another duplicate threshold "
                "(or none); answering live until they are recomputed"
            )
            engine.recommendations.mark_stale()  # recomputed refresh_after_s from now
        engine.recommendations.start()
        log.info(
            "loaded model %s, index %s (%d products), detector %s in %.1fs",
            embedder.name,
            settings.index,
            index.count(),
            settings.detector or "none",
            time.perf_counter() - start,
        )
        return engine

    def close(self) -> None:
        if self.crops is not None:
            self.crops.close()  # the crops of answered searches are written first
        if self.events is not None:
            self.events.close()
        if self.recommendations.stop():
            self.index.close()
        else:  # closing under a running refresh could free memory it reads; writes are durable
            log.warning("a recommendation refresh is still running; leaving the index open")

    @property
    def model_name(self) -> str:
        return self.embedder.name

    def product_count(self) -> int:
        return self.index.count()

    # ---- reads -------------------------------------------------------------------------------

    def _timed(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.metrics.time_stage(stage, now - start)
        return now

    def decode(self, data: bytes) -> DecodedImage:
        """Bytes -> RGB image at most ``max_image_side`` a side, or an ``ImageError`` (mapped to
        400/413/415 by the routes). At most ``decode_workers`` decodes run at once, so their
        memory together stays within that many times one decode's ceiling."""
        with self._decode_slots:
            return decode_image(data, self.limits)

    def objects(self, decoded: DecodedImage) -> list[SearchObject]:
        """Detected objects (crops), or the whole photo when no detector is set or none is found.
        Boxes are in the uploaded file's pixels, even when it was shrunk to be searched."""
        image = decoded.image
        if self.detector is None:
            return [SearchObject(image)]
        from visnet.detect import shop_the_look

        detections = self.detector.detect([image])[0]  # the caller holds a model slot
        found = shop_the_look(
            image, detections, self.settings.detect_threshold, self.settings.max_objects
        )
        sx, sy = decoded.scale
        return [
            SearchObject(crop, _scaled(obj.box, sx, sy), obj.label, obj.score, obj.label_score)
            if obj.label
            else SearchObject(crop)  # the whole-photo fallback
            for obj, crop in found
        ]

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """A write's embeddings: its turn comes after every waiting search's."""
        with self._model_slots.hold(WRITE):
            return self.embedder.embed(images)

    def search(
        self, data: bytes, k: int, category: str | None, filters: ProductFilter | None = None
    ) -> SearchResults:
        """Search a photo: one result list per detected object ("shop the look"), each of the
        products that pass ``filters``."""
        start = t = time.perf_counter()
        decoded = self.decode(data)
        t = self._timed("decode", t)
        with self._model_slots.hold(SEARCH):  # ModelBusyError when too many wait
            t = self._timed("model_wait", t)
            found = self.objects(decoded)
            t = self._timed("detect", t) if self.detector is not None else t
            vectors = self.embedder.embed([obj.image for obj in found])
            t = self._timed("embed", t)
        objects = []
        for obj, vector in zip(found, vectors, strict=True):
            wanted = category or self.object_category(obj, vector)
            matches = self.matches(self.index.search(vector, k, wanted, filters))
            shown = (obj.box, obj.label, obj.score, obj.label_score, wanted, matches)
            objects.append(ObjectResults(*shown, self.keep_crop(obj.image)))
        self._timed("search", t)
        return SearchResults(objects, time.perf_counter() - start)

    def _crop_writer(self) -> QueryCropWriter | None:
        """The search crops' writer, which prunes them at once; None when crops are not kept."""
        if not self.settings.keep_query_crops:
            return None
        outcomes = self.metrics.query_crops
        return QueryCropWriter(
            self.index.path,
            max_age_s=self.settings.query_crop_max_age_days * 86400.0,
            max_total_bytes=self.settings.query_crop_max_bytes,
            queue_size=self.settings.query_crop_queue,
            prune_every=PRUNE_EVERY,
            count=lambda outcome: outcomes.labels(outcome).inc(),
        )

    def keep_crop(self, image: Image.Image) -> str | None:
        """The id of a searched crop kept for feedback triplets (`visnet.feedback.queries`),
        written by a background thread; None when crops are not kept or the writer is too far
        behind to take it (the search is served either way)."""
        return None if self.crops is None else self.crops.keep(image)

    def object_category(self, obj: SearchObject, vector: np.ndarray) -> str | None:
        """The category to search a detected object in when the request names none: its nearest
        catalog product's, when that is at least ``neighbour_category_score`` similar; else the
        detector's label, when the detector is sure of the object and of its label; else None
        (every category), as for a whole photo. A doubtful detection (kept because it was the
        best) gives a box, not a category."""
        if obj.box is None:
            return None
        floor = self.settings.neighbour_category_score
        if floor is not None:
            nearest = self.index.search(vector, 1)
            if nearest and nearest[0].score >= floor:
                return self.product(nearest[0].product_id).category
        confident = (
            obj.label in self.categories()
            and (obj.score or 0.0) >= self.settings.detect_threshold
            and (obj.label_score or 0.0) >= self.category_threshold
        )
        return obj.label if confident else None

    def product(self, product_id: str) -> Product:
        """The product (cached until the next write); ``UnknownProductError`` if there is none."""
        found = self.products.get(product_id)
        if found is None:
            generation = self.recommendations.generation
            found = self.index.get(product_id)
            if generation == self.recommendations.generation:
                self.products.put(product_id, found)
        return found

    def matches(self, hits: list[Hit]) -> list[Match]:
        """Index hits -> result entries (titles and categories from the product cache)."""
        out = []
        for hit in hits:
            p = self.product(hit.product_id)
            shown = (p.id, p.category, p.title, len(p.images), hit.score)
            out.append(Match(*shown, p.price, p.brand, p.in_stock, hit.duplicates))
        return out

    def quick_similar(
        self,
        product_id: str,
        k: int,
        same_category: bool,
        filters: ProductFilter | None = None,
    ) -> Similar | None:
        """The /similar answer from the answer cache or the stored list, or None (then ask
        `live_similar`). Quick enough for the event loop: a dict lookup or one SQLite read."""
        found = self.similar_cache.get((product_id, k, same_category, filters or None))
        if found is not None:
            self.metrics.similar_source.labels("cache").inc()
            return found
        if filters:  # the stored lists are unfiltered
            return None
        return self.precomputed_similar(product_id, k, same_category)

    def precomputed_similar(self, product_id: str, k: int, same_category: bool) -> Similar | None:
        """The /similar answer from the stored list, or None (stale, short or absent).

        One indexed SQLite query (about 0.1 ms with 1M products). A product with a stored list
        exists: deleting a product deletes its list.
        """
        if not (same_category and self.recommendations.fresh):
            return None
        generation = self.recommendations.generation
        stored = self.index.recommendation_rows(product_id)
        if stored is None or len(stored[0]) < k:
            return None
        matches = tuple(map(Match._make, stored[0][:k]))
        answer = Similar(product_id, "precomputed", matches, tuple(stored[1]))
        return self._answer(answer, k, same_category, None, generation)

    def live_similar(
        self,
        product_id: str,
        k: int,
        same_category: bool,
        filters: ProductFilter | None = None,
    ) -> Similar:
        """The /similar answer searched now (``UnknownProductError`` for a bad id), of the
        products that pass ``filters``."""
        generation = self.recommendations.generation
        self.product(product_id)  # unknown ids raise here (from the cache when warm)
        found = self.index.look_alikes(product_id, k, same_category, filters)
        answer = Similar(product_id, "live", tuple(self.matches(found.hits)), found.duplicates)
        return self._answer(answer, k, same_category, filters, generation)

    def _answer(
        self,
        answer: Similar,
        k: int,
        same_category: bool,
        filters: ProductFilter | None,
        generation: int,
    ) -> Similar:
        self.metrics.similar_source.labels(answer.source).inc()
        if generation == self.recommendations.generation:  # no write raced this answer
            key = (answer.product_id, k, same_category, filters or None)
            self.similar_cache.put(key, answer)
        return answer

    def categories(self) -> dict[str, int]:
        """Category -> product count (cached until the next write)."""
        return self._until_write("_categories", self.index.category_counts)

    def facets(self) -> Facets:
        """What the products can be filtered on (cached until the next write)."""
        return self._until_write("_facets", self.index.facets)

    def _until_write(self, attribute: str, read: Callable[[], T]) -> T:
        """``read()``, kept in ``attribute`` until the next write clears it; not kept when a
        write raced the read."""
        found = getattr(self, attribute)
        if found is None:
            generation = self.recommendations.generation
            found = read()
            if generation == self.recommendations.generation:
                setattr(self, attribute, found)
        return found

    def browse(self, category: str | None, cursor: str | None, limit: int) -> ProductPage:
        """One page of the catalog in id order, optionally of one category (an unknown one gives
        an empty page): the products with ids after ``cursor``. One keyset read of ``limit + 1``
        rows (the extra one says whether a next page exists); the total comes from the cached
        category counts."""
        found = self.index.page(category, cursor or "", limit + 1)
        more = len(found) > limit
        products = tuple(found[:limit])
        counts = self.categories()
        total = sum(counts.values()) if category is None else counts.get(category, 0)
        return ProductPage(products, products[-1].id if more else None, total)

    def image_file(self, product_id: str, view: int) -> Path | None:
        """The file of one product view, under the catalog root or the uploads folder; else None."""
        product = self.product(product_id)
        if not 0 <= view < len(product.images):
            return None
        return product_image(product.images[view], self.catalog_root, self.index.path)

    # ---- shopper events ------------------------------------------------------------------------

    def known_products(self, product_ids: set[str]) -> set[str]:
        """The ones of ``product_ids`` the catalog holds (the product cache first)."""
        return {p for p in product_ids if self.products.get(p) is not None or p in self.index}

    def record_events(self, body: Any) -> BatchResult:
        """Log a batch's good events, naming the refused ones (`EventLog.record_batch`);
        `BatchError` for a body that is no batch, RuntimeError when there is no event log."""
        if self.events is None:
            raise RuntimeError("the event log could not be opened; see the server log")
        result = self.events.record_batch(body, self.known_products)
        self.metrics.events.labels("accepted").inc(result.accepted)
        self.metrics.events.labels("rejected").inc(len(result.rejected))
        return result

    # ---- writes ------------------------------------------------------------------------------

    def _invalidate(self) -> None:
        self.similar_cache.clear()
        self.products.clear()
        self._categories = self._facets = None

    def ingest(
        self,
        product_id: str,
        category: str,
        title: str,
        images: list[bytes],
        offer: dict[str, Any] | None = None,
    ) -> tuple[Product, bool]:
        """Create or replace a product from image bytes: decode all (any bad one fails the whole
        request, nothing written), embed, store the files, upsert. Visible to the next query.
        ``offer``: the product's ``price``, ``brand`` and ``in_stock`` (absent: not known)."""
        decoded = [self.decode(data).image for data in images]
        vectors = self.embed(decoded)
        with self._write_lock:
            created = product_id not in self.index
            refs = files.save_uploads(self.index.path, product_id, decoded)
            product = Product(product_id, category, title, refs, {"source": "api"}, **(offer or {}))
            self.recommendations.mark_stale()
            try:
                self.index.upsert(product, vectors)
            except BaseException:
                files.remove_uploads(self.index.path, product_id, keep=self._current(product_id))
                raise
            finally:
                self._invalidate()
            files.remove_uploads(self.index.path, product_id, keep=refs)
        return self.index.get(product_id), created

    def _current(self, product_id: str) -> tuple[str, ...]:
        return self.index.get(product_id).images if product_id in self.index else ()

    def delete(self, product_id: str) -> None:
        """Remove a product, its vectors and its uploaded files; ``UnknownProductError`` if none."""
        with self._write_lock:
            self.recommendations.note_write()  # answers computed meanwhile must not be cached
            try:
                self.index.delete(product_id)
            finally:
                self._invalidate()
            files.remove_uploads(self.index.path, product_id)
