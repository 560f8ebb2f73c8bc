"""The Street2Shop retrieval protocol: crop, embed, search within category, recall@k by product."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visnet.data.catalog import read_side_info, side_attribute
from visnet.data.street2shop import Street2ShopSet, StreetPair, read_set
from visnet.detect.crops import QUERY_BOXES, QUERY_MARGIN, SCORE_WEIGHT, query_boxes
from visnet.embed.pipeline import Item, PipelineSettings, Skipped, embed_items, read_batches
from visnet.embed.registry import create_embedder, embedder_fingerprint
from visnet.eval.cache import (
    CachedEmbeddings,
    EmbeddingCache,
    cache_key,
    data_fingerprint,
    default_cache_dir,
)
from visnet.eval.metrics import dedupe_products, recall_at_k
from visnet.eval.recommend import read_variants, recommendation_quality
from visnet.features.base import Embedder
from visnet.index.pca import PCA, fit_pca, max_components

log = logging.getLogger(__name__)

__all__ = [
    "CROP_MODES",
    "DEFAULT_KS",
    "embed_queries",
    "embed_shop",
    "evaluate",
    "rank_queries",
    "reduce_dims",
]

CROP_MODES = ("gt", "none", "detector")
DEFAULT_KS = (1, 5, 10, 20)
# A true box is searched as annotated; a detected box with the context a served query keeps.
MARGINS = {"gt": 0.0, "detector": QUERY_MARGIN}
# the crop function's version in cache keys: queries cached before it cut crops another way
CROP_VERSION = "crop_with_margin-1"


# ------------------------------------------------------------------------------- entry function


def evaluate(
    data_root: Path | str,
    embedder: Embedder | str,
    crops: str = "gt",
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    dim: int | None = None,
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
    progress: bool = True,
    detector: str | Path | None = None,
    detector_boxes: int | None = None,
) -> dict[str, Any]:
    """Run the protocol on `split` of the set at `data_root`; return the JSON-able result.

    `crops="detector"` crops each street photo by the `detector_boxes` (default `QUERY_BOXES`,
    3) best boxes of the
    `detector` checkpoint (the whole photo when it finds nothing); each catalog product is
    ranked by its best similarity to any crop, less `SCORE_WEIGHT` per unit of log score
    below the best box (`visnet.detect.crops`). With one box, that box alone is the query.
    With `detector_boxes=0` the query is the detected box a shopper would pick ("shop the look":
    the page draws every box and the shopper clicks the product wanted): the best-scoring
    detection on the true box (IoU >= 0.5), or the best box when none is on it.

    `embedder` is an Embedder or a registry name. `dim` reduces both sides with a PCA fitted on
    the catalog embeddings. `cache_dir` defaults to DATA/.cache/embeddings. Missing or unreadable
    images are skipped and counted; a malformed metadata file raises DataFormatError.
    """
    started = time.perf_counter()
    ks = _check_options(crops, ks, dim)
    detector_boxes = QUERY_BOXES if detector_boxes is None else detector_boxes
    if detector_boxes < 0:
        raise ValueError(
            f"detector_boxes must be 0 (the shopper's box) or more; got {detector_boxes}"
        )
    if crops == "detector" and detector is None:
        raise ValueError("--crops detector needs --detector PATH (a checkpoint of visnet detect)")
    data = read_set(data_root)
    if split not in data.pairs:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(data.pairs)}")
    model, spec = (
        (create_embedder(embedder, backend="auto"), embedder)
        if isinstance(embedder, str)
        else (embedder, None)
    )
    cache = EmbeddingCache((cache_dir or default_cache_dir(data_root)) if use_cache else None)
    base = {
        "embedder": embedder_fingerprint(model),
        "data": data_fingerprint(data_root),
    }
    shop = embed_shop(data, model, cache, base, progress)
    per_query = detector_boxes if crops == "detector" else 1
    boxes = (
        _detector_boxes(data, split, detector, progress, per_query) if crops == "detector" else None
    )
    if boxes is not None:
        # the crops depend on the detector file, the number of boxes and the margin
        digest = _file_digest(Path(str(detector)))
        base = {**base, "detector": digest, "boxes": str(per_query), "margin": str(QUERY_MARGIN)}
    crops_of = embed_queries(data, model, split, crops, cache, base, progress, boxes)
    queries = _group_crops(crops_of, data.pairs[split], boxes)
    shop_vectors, query_vectors, _ = reduce_dims(shop.vectors, crops_of.vectors, dim)
    pairs = [data.pairs[split][i] for i in queries.ids]
    rankings = rank_queries(
        data, shop.ids, shop_vectors, pairs, query_vectors, max(ks), queries.rows, queries.bonus
    )
    result = {
        "model": spec or model.name,
        "data": str(data_root),
        "crops": crops,
        **({"detector_boxes": per_query} if crops == "detector" else {}),
        "split": split,
        "dim": int(shop_vectors.shape[1]) if len(shop_vectors) else (dim or model.dim),
        "embedder_dim": model.dim,
        "queries": len(pairs),
        "skipped": _skipped_summary(queries, shop),
        "overall": _recalls(rankings, [p.product for p in pairs], ks),
        "per_category": _per_category(data, split, pairs, rankings, queries, shop.ids, ks),
        "nearest_category": nearest_category(
            data, shop.ids, shop_vectors, pairs, query_vectors, queries.rows, queries.bonus
        ),
        "per_kind": _per_kind(Path(data_root), pairs, rankings, ks),
        "recommendation": _recommendation(data, shop.ids, shop_vectors),
        "embeddings": {"catalog": shop.source, "queries": crops_of.source},
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    log.info("evaluated %s: %d queries in %.1f s", result["model"], len(pairs), result["seconds"])
    return result


def _check_options(crops: str, ks: Sequence[int], dim: int | None) -> list[int]:
    if crops not in CROP_MODES:
        raise ValueError(f"crops must be one of {CROP_MODES}; got {crops!r}")
    if dim is not None and dim < 1:
        raise ValueError(f"dim must be a positive integer or None; got {dim}")
    checked = sorted({int(k) for k in ks})
    if not checked or checked[0] < 1:
        raise ValueError(f"ks must be positive integers; got {list(ks)}")
    return checked


# ------------------------------------------------------------------------------------ embedding


def embed_shop(
    data: Street2ShopSet,
    embedder: Embedder,
    cache: EmbeddingCache,
    base: dict[str, str],
    progress: bool = True,
) -> CachedEmbeddings:
    """Embeddings of every distinct catalog photo (ids = photo ids), from the cache if present."""
    photos = sorted({s.photo for s in data.shop})
    items = [Item(photo, data.photo_path(photo)) for photo in photos]
    return _cached(
        cache, {**base, "kind": "shop"}, lambda: _embed(items, embedder, "catalog", progress)
    )


def embed_queries(
    data: Street2ShopSet,
    embedder: Embedder,
    split: str,
    crops: str,
    cache: EmbeddingCache,
    base: dict[str, str],
    progress: bool = True,
    boxes: dict[int, list[tuple[tuple[float, float, float, float], float]]] | None = None,
) -> CachedEmbeddings:
    """Embeddings of the street photos of `split`, one row per crop.

    The crop is the true box (`gt`, as annotated), none, or each of the `boxes` given per photo
    id (`detector`: box and log relative score, best first, each grown by `QUERY_MARGIN` as the
    service grows its detections; none found means the whole photo). Row ids are
    `pair index * per_photo + crop number`, per_photo being 1 unless `boxes` is given, where it
    is the most boxes any photo has.
    """
    per_photo = _per_photo(boxes)
    margin = MARGINS.get(crops, 0.0)
    items = [
        Item(i * per_photo + j, data.photo_path(p.photo), box, margin)
        for i, p in enumerate(data.pairs[split])
        for j, box in enumerate(_query_boxes(p, crops, boxes))
    ]
    key = {**base, "kind": "queries", "split": split, "crops": crops, "crop": CROP_VERSION}
    return _cached(cache, key, lambda: _embed(items, embedder, f"{split} queries", progress))


def _per_photo(boxes: dict[int, list] | None) -> int:
    return max([1] + [len(found) for found in boxes.values()]) if boxes else 1


def _query_boxes(
    pair: StreetPair,
    crops: str,
    boxes: dict[int, list[tuple[tuple[float, float, float, float], float]]] | None,
) -> list[tuple[float, float, float, float] | None]:
    if crops == "gt":
        return [pair.bbox.as_xyxy()]
    if crops == "detector" and boxes is not None:
        return [box for box, _ in boxes.get(pair.photo, [])] or [None]
    return [None]


@dataclass(frozen=True)
class _Queries:
    """The queries that could be embedded: pair indices, each one's crop rows and score bonus."""

    ids: list[int]
    rows: list[list[int]]
    bonus: np.ndarray  # per crop row: SCORE_WEIGHT * log(detection score / best score)
    skipped: list[tuple[int, str]]


def _group_crops(
    crops: CachedEmbeddings,
    pairs: list[StreetPair],
    boxes: dict[int, list[tuple[tuple[float, float, float, float], float]]] | None,
) -> _Queries:
    """Gather crop rows by query; a query is skipped only when none of its crops was embedded."""
    per_photo = _per_photo(boxes)
    rows: dict[int, list[int]] = {}
    bonus = np.zeros(len(crops.ids), np.float32)
    for row, crop_id in enumerate(crops.ids):
        index, j = divmod(crop_id, per_photo)
        rows.setdefault(index, []).append(row)
        found = boxes.get(pairs[index].photo, []) if boxes else []
        bonus[row] = SCORE_WEIGHT * found[j][1] if j < len(found) else 0.0
    skipped: dict[int, str] = {}
    for crop_id, why in crops.skipped:
        skipped.setdefault(crop_id // per_photo, why)
    ids = sorted(rows)
    return _Queries(
        ids=ids,
        rows=[rows[i] for i in ids],
        bonus=bonus,
        skipped=[(i, why) for i, why in sorted(skipped.items()) if i not in rows],
    )


def _detector_boxes(
    data: Street2ShopSet, split: str, path: str | Path | None, progress: bool, top: int
) -> dict[int, list[tuple[tuple[float, float, float, float], float]]]:
    """The `top` best boxes of each readable street photo, with log relative scores; `top` 0:
    the one box a shopper would pick (`shoppers_box`).

    Photos are decoded by the embedding pipeline's reader (in parallel, bad ones skipped).
    """
    from visnet.detect import Detector
    from visnet.detect.crops import shoppers_box

    wanted = {p.photo: p.bbox.as_xyxy() for p in data.pairs[split]}

    detector = Detector.load(str(path))
    boxes: dict[int, list[tuple[tuple[float, float, float, float], float]]] = {}
    photos = sorted({p.photo for p in data.pairs[split]})
    items = [Item(photo, data.photo_path(photo)) for photo in photos]
    bar = tqdm(total=len(items), desc="detect", unit="img", disable=not progress, leave=False)
    with bar:
        for batch in read_batches(items, batch_size=8):
            for item, image in batch:
                if not isinstance(image, Skipped):
                    found = detector.detect([image])[0]
                    photo = int(item.key)
                    boxes[photo] = (
                        query_boxes(found, top) if top else shoppers_box(found, wanted[photo])
                    )
            bar.update(len(batch))
    return boxes


def _file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _cached(
    cache: EmbeddingCache, parts: dict[str, str], compute: Callable[[], CachedEmbeddings]
) -> CachedEmbeddings:
    key = cache_key(**parts)
    entry = cache.load(key)
    if entry is None:
        entry = compute()
        cache.save(key, entry, parts)
    return entry


def _embed(items: list[Item], embedder: Embedder, what: str, progress: bool) -> CachedEmbeddings:
    """The embedding pipeline over `items`, as a cache entry (ids = item keys)."""
    settings = PipelineSettings(progress=progress, desc=f"embed {what}")
    done = embed_items(items, embedder, settings)
    return CachedEmbeddings(
        ids=[int(key) for key in done.keys],
        vectors=done.single(),
        skipped=[(int(s.key), s.reason) for s in done.skipped],
    )


# ----------------------------------------------------------------------------- reduce and search


def reduce_dims(
    shop: np.ndarray, queries: np.ndarray, dim: int | None
) -> tuple[np.ndarray, np.ndarray, PCA | None]:
    """The index's PCA (`visnet.index.pca.fit_pca`) to `dim`, fitted on the catalog vectors as
    `visnet index build` fits it, applied to both sides; returns both and the PCA."""
    if dim is None or len(shop) == 0:
        return shop, queries, None
    limit = max_components(*shop.shape)
    if dim > limit:
        raise ValueError(
            f"dim {dim} is too large: PCA on {shop.shape[0]} catalog vectors of {shop.shape[1]}-D "
            f"can keep at most {limit} dimensions"
        )
    pca = fit_pca(shop, dim=dim)
    reduced_queries = pca.apply(queries) if len(queries) else np.zeros((0, dim), np.float32)
    return pca.apply(shop), reduced_queries, pca


def rank_queries(
    data: Street2ShopSet,
    shop_ids: list[int],
    shop_vectors: np.ndarray,
    pairs: list[StreetPair],
    query_vectors: np.ndarray,
    depth: int,
    query_rows: list[list[int]],
    bonus: np.ndarray,
) -> list[list[int]]:
    """For each query, the first `depth` distinct products of its category, best first.

    Query i is the rows `query_rows[i]` of `query_vectors` (its crops); a catalog image scores
    its best similarity to any of them plus that crop's `bonus`.
    """
    row_of = {photo: row for row, photo in enumerate(shop_ids)}
    rankings: list[list[int]] = [[] for _ in pairs]
    for category in sorted({p.category for p in pairs}):
        shop = [(row_of[s.photo], s.product) for s in data.shop_in(category) if s.photo in row_of]
        queries = [i for i, p in enumerate(pairs) if p.category == category]
        if not shop:
            log.warning("category %s: no readable catalog image; its queries all miss", category)
            continue
        rows, products = np.array([r for r, _ in shop]), np.array([p for _, p in shop])
        views = max(Counter(products.tolist()).values())
        found = _search(
            shop_vectors[rows],
            query_vectors,
            [query_rows[i] for i in queries],
            bonus,
            min(len(rows), depth * views),
        )
        for query, order in zip(queries, found, strict=True):
            rankings[query] = dedupe_products(products[order].tolist(), limit=depth)
    return rankings


def nearest_category(
    data: Street2ShopSet,
    shop_ids: list[int],
    shop_vectors: np.ndarray,
    pairs: list[StreetPair],
    query_vectors: np.ndarray,
    query_rows: list[list[int]],
    bonus: np.ndarray,
) -> float | None:
    """The share of queries whose nearest catalog image over every category is of the query's
    own category: how the service names a detected object's category when the request names
    none (`Engine.object_category`, from `neighbour_category_score` up). None without queries."""
    if not pairs or not len(shop_vectors):
        return None
    category_of = {s.photo: s.category for s in data.shop}
    nearest = _search(shop_vectors, query_vectors, query_rows, bonus, 1)[:, 0]
    named = [category_of[shop_ids[row]] for row in nearest]
    return float(np.mean([name == pair.category for name, pair in zip(named, pairs, strict=True)]))


def _search(
    database: np.ndarray,
    vectors: np.ndarray,
    queries: list[list[int]],
    bonus: np.ndarray,
    top: int,
    chunk: int = 1024,
) -> np.ndarray:
    """Exact inner-product search: the `top` best database rows per query, best first (n, top).

    A query is several rows of `vectors`; a database row scores its best similarity to any of
    them plus that row's `bonus`.
    """
    out = np.zeros((len(queries), top), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        group = queries[start : start + chunk]
        flat = np.fromiter((r for rows in group for r in rows), np.int64)
        starts = np.cumsum([0] + [len(rows) for rows in group[:-1]])
        scores = np.maximum.reduceat(vectors[flat] @ database.T + bonus[flat, None], starts, axis=0)
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


# -------------------------------------------------------------------------------------- results


def _recalls(rankings: list[list[int]], truth: list[int], ks: list[int]) -> dict[str, float | None]:
    if not truth:
        return {f"recall@{k}": None for k in ks}
    return {f"recall@{k}": round(v, 4) for k, v in recall_at_k(rankings, truth, ks).items()}


def _per_kind(
    root: Path, pairs: list[StreetPair], rankings: list[list[int]], ks: list[int]
) -> dict[str, dict[str, Any]]:
    """Recall by product kind (`attributes.kind` in catalog.jsonl: "photo" or "clipart")."""
    kinds = side_attribute(read_side_info(root), "kind")
    table: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kinds.values())):
        chosen = [i for i, p in enumerate(pairs) if kinds.get(p.product) == kind]
        truth = [pairs[i].product for i in chosen]
        table[kind] = {**_recalls([rankings[i] for i in chosen], truth, ks), "queries": len(chosen)}
    return table


def _per_category(
    data: Street2ShopSet,
    split: str,
    pairs: list[StreetPair],
    rankings: list[list[int]],
    queries: _Queries,
    shop_ids: list[int],
    ks: list[int],
) -> dict[str, dict[str, Any]]:
    """Recall per category, with its query, skipped-query and searchable-product counts."""
    skipped = Counter(data.pairs[split][i].category for i, _ in queries.skipped)
    readable = set(shop_ids)
    searchable = Counter(
        category
        for category, _ in {(s.category, s.product) for s in data.shop if s.photo in readable}
    )
    table: dict[str, dict[str, Any]] = {}
    for category in sorted({p.category for p in data.pairs[split]}):
        chosen = [i for i, p in enumerate(pairs) if p.category == category]
        truth = [pairs[i].product for i in chosen]
        table[category] = {
            **_recalls([rankings[i] for i in chosen], truth, ks),
            "queries": len(chosen),
            "skipped": skipped.get(category, 0),
            "products": searchable.get(category, 0),
        }
    return table


def _skipped_summary(queries: _Queries, shop: CachedEmbeddings) -> dict[str, Any]:
    return {
        "count": len(queries.skipped),
        "reasons": dict(Counter(why for _, why in queries.skipped)),
        "catalog_images": len(shop.skipped),
        "catalog_reasons": dict(Counter(why for _, why in shop.skipped)),
    }


def _recommendation(data: Street2ShopSet, shop_ids: list[int], vectors: np.ndarray) -> dict:
    info = {s.photo: s for s in data.shop}
    products = [info[photo].product for photo in shop_ids]
    categories = [info[photo].category for photo in shop_ids]
    variants = read_variants(data.root / "catalog.jsonl")
    return recommendation_quality(vectors, products, categories, variants)
