"""The Milvus store: the `VectorStore` protocol on one Milvus collection (cluster or Milvus Lite).

One index = one collection with fields ``id INT64`` (primary key, ``auto_id=False``),
``vector FLOAT_VECTOR(dim)`` and ``category VARCHAR``; the metric is inner product. A category
search is a scalar filter ``category == "<name>"``: the same expression on Milvus Lite and on a
cluster. On a cluster ``category`` is also the *partition key* (``partition_key``, default on
there), so Milvus routes a filtered search to the partitions that can hold it.

Consistency: the collection is created with ``consistency_level="Strong"`` and every read
(search, get, count) asks for it again, so a read waits until every write acknowledged before
it was issued is visible: an upsert or delete is seen by the next query, as the protocol asks.
Durability: a write returns once Milvus acknowledged it, i.e. once a cluster logged it to its
write-ahead log (Woodpecker, Pulsar or Kafka); ``snapshot`` is ``flush`` (seal segments), and
there is no local log to truncate. Milvus Lite (a ``*.db`` path) keeps its own log in that
folder, written through to the operating system on every write (it survives a killed process;
it fsyncs only when it closes, so not a power cut).

The collection carries the index's identity as properties (``visnet.model_fingerprint``,
``visnet.pca_fingerprint``, ``visnet.dim``); opening it for another model, PCA or dimension is
refused, as the embedded store refuses another dimension.

Index types are settings: ``FLAT`` (exact) is the default on Milvus Lite, ``HNSW`` (``M``,
``efConstruction``, search ``ef`` as the embedded store's `HnswParams`) on a cluster; ``IVF_FLAT``,
``IVF_SQ8``, ``IVF_PQ``, ``DISKANN`` and ``AUTOINDEX`` take Milvus's own parameters. Which of
these only a cluster exercises is said in ``docs/DEPLOY.md``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visnet.index.partitions import HnswParams
from visnet.index.protocol import IndexMismatchError, StoreError, check_batch

__all__ = ["INDEX_TYPES", "MilvusSettings", "MilvusStore"]

log = logging.getLogger(__name__)

FORMAT = "visnet-vectors"
CONSISTENCY = "Strong"
MAX_TOPK = 16_384  # Milvus's limit on a search's k (and on one query's result window)
CHUNK = 4_096  # rows per upsert, ids per get or delete: well inside gRPC's 64 MB messages
MAX_CATEGORY = 512  # bytes in a category name (the VARCHAR's max_length)
SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
_HNSW = HnswParams()
# Milvus Lite files open in this process, by how many stores use each: the last store to close
# one stops its in-process server, which frees the file for another process (as closing the
# embedded store frees its folder)
_LITE_USERS: Counter[str] = Counter()
_LITE_LOCK = threading.Lock()
# Each index type's build and search parameters, before the settings' own override them
INDEX_TYPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": _HNSW.M, "efConstruction": _HNSW.ef_construction}, {"ef": _HNSW.ef}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 64, "nbits": 8}, {"nprobe": 32}),
    "DISKANN": ({}, {"search_list": 100}),
    "AUTOINDEX": ({}, {}),
}


@dataclass(frozen=True)
class MilvusSettings:
    """Where the collection lives and how it is indexed.

    ``uri``: a server (``http://host:19530``, ``https://...``, ``tcp://``, ``unix:``) or a local
    ``*.db`` path, which is Milvus Lite in this process. ``token``: ``user:password`` or an API
    key (never written to a manifest). ``index_type`` None: FLAT on Lite, HNSW on a server;
    ``partition_key`` None: on for a server, off on Lite. ``index_params`` and
    ``search_params`` override the type's defaults (`INDEX_TYPES`). ``replicas``: in-memory
    replicas when this store loads a collection that is not loaded yet (None: the server's
    default); a loaded collection is used as it is, so an operator's replica count stands.
    """

    uri: str
    token: str = field(default="", repr=False)
    index_type: str | None = None
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    partition_key: bool | None = None
    replicas: int | None = None

    def __post_init__(self) -> None:
        if not self.uri.startswith(SERVER_SCHEMES) and not self.uri.endswith(".db"):
            raise ValueError(
                f"Milvus URI {self.uri!r} is neither a server (http://host:19530, https://, "
                "tcp://, unix:) nor a Milvus Lite file (a path ending in .db)"
            )
        if self.index_type is not None and self.index_type.upper() not in INDEX_TYPES:
            raise ValueError(
                f"Milvus index type {self.index_type!r} is not one of {', '.join(INDEX_TYPES)}"
            )

    @property
    def lite(self) -> bool:
        """Whether the URI is a local file: Milvus Lite, in this process."""
        return not self.uri.startswith(SERVER_SCHEMES)

    @property
    def kind(self) -> str:
        """The index type in force (the default for Lite or a server if none is set)."""
        return (self.index_type or ("FLAT" if self.lite else "HNSW")).upper()

    @property
    def build(self) -> dict[str, Any]:
        return {**INDEX_TYPES[self.kind][0], **self.index_params}

    @property
    def search(self) -> dict[str, Any]:
        return {**INDEX_TYPES[self.kind][1], **self.search_params}

    @property
    def keyed(self) -> bool:
        """Whether ``category`` is the collection's partition key."""
        return (not self.lite) if self.partition_key is None else self.partition_key

    def located(self) -> MilvusSettings:
        """These settings with a Lite path made absolute (a manifest outlives the cwd)."""
        if not self.lite:
            return self
        return MilvusSettings(**{**asdict(self), "uri": str(Path(self.uri).expanduser().resolve())})

    def to_manifest(self, collection: str) -> dict[str, Any]:
        """What an index manifest keeps: where and how its vectors are stored (no token)."""
        return {
            "engine": "milvus",
            "uri": self.uri,
            "collection": collection,
            "index_type": self.kind,
            "index_params": self.build,
            "search_params": self.search,
            "partition_key": self.keyed,
        }


class MilvusStore:
    """A `VectorStore` on a Milvus collection; `create` makes one, `open` checks and loads one.

    Thread-safe: a ``MilvusClient`` multiplexes one gRPC channel across threads, and Milvus
    orders the writes. Unlike the embedded store, several processes may open one collection
    (service replicas): the product database decides which writer runs (``docs/DEPLOY.md``).
    """

    def __init__(
        self, dim: int, settings: MilvusSettings, collection: str, client: Any, identity: dict
    ) -> None:
        """Use `create` or `open`."""
        self.dim, self.settings, self.collection = dim, settings, collection
        self.identity = identity
        self._client = client
        self._search = {"metric_type": "IP", "params": settings.search}

    # ---- opening ---------------------------------------------------------------------------

    @staticmethod
    def _connect(settings: MilvusSettings) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise StoreError(
                "the Milvus store needs pymilvus (and milvus-lite for a .db path): "
                "pip install 'visnet[scale]'"
            ) from exc
        if not settings.lite:
            return MilvusClient(uri=settings.uri, token=settings.token)
        Path(settings.uri).parent.mkdir(parents=True, exist_ok=True)
        with _LITE_LOCK:
            client = MilvusClient(uri=settings.uri)
            _LITE_USERS[settings.uri] += 1
        return client

    @classmethod
    def create(
        cls, dim: int, settings: MilvusSettings, collection: str, identity: dict[str, Any]
    ) -> MilvusStore:
        """Make a new collection for ``dim``-D vectors of this identity (refused if it exists).

        ``identity``: the index's ``model_fingerprint`` and ``pca_fingerprint`` (or None)."""
        store = cls(dim, settings, collection, cls._connect(settings), identity)
        with store._closed_on_error():
            store._make_collection()
        log.info("created Milvus collection %s at %s (%s)", collection, settings.uri, settings.kind)
        return store

    @classmethod
    def open(
        cls, dim: int, settings: MilvusSettings, collection: str, identity: dict[str, Any]
    ) -> MilvusStore:
        """Open an existing collection, refusing one of another dimension, model or PCA."""
        store = cls(dim, settings, collection, cls._connect(settings), identity)
        with store._closed_on_error():
            client = store._db()
            if not client.has_collection(collection):
                raise StoreError(
                    f"Milvus at {settings.uri} has no collection {collection!r}; point "
                    "VISNET_MILVUS_URI at the Milvus the index was built with, or rebuild it"
                )
            saved = client.describe_collection(collection).get("properties", {})
            _check_identity(collection, saved, _properties(dim, identity))
            store._load()
        return store

    def _load(self) -> None:
        """Load the collection unless it is loaded (reloading with another replica count fails)."""
        client = self._db()
        state = client.get_load_state(self.collection).get("state")
        if getattr(state, "name", str(state)) == "Loaded":
            return
        if self.settings.replicas is None:
            client.load_collection(self.collection)
        else:
            client.load_collection(self.collection, replica_number=self.settings.replicas)

    def _make_collection(self) -> None:
        from pymilvus import DataType

        client, settings = self._db(), self.settings
        if client.has_collection(self.collection):
            raise StoreError(
                f"Milvus at {settings.uri} already has a collection {self.collection!r}; "
                "open it, or drop it first"
            )
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field(
            "category", DataType.VARCHAR, max_length=MAX_CATEGORY, is_partition_key=settings.keyed
        )
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector", index_type=settings.kind, metric_type="IP", params=settings.build
        )
        client.create_collection(
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level=CONSISTENCY,
            properties=_properties(self.dim, self.identity),
        )

    @contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _db(self) -> Any:
        if self._client is None:
            raise StoreError(f"Milvus store {self.collection} is closed; open it again")
        return self._client

    # ---- writes ----------------------------------------------------------------------------

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, categories: list[str]) -> None:
        """Insert or replace vectors (Milvus's upsert: delete + insert); acknowledged = logged."""
        ids, vectors = check_batch(ids, vectors, categories, self.dim)
        for category in dict.fromkeys(categories):
            if len(category.encode()) > MAX_CATEGORY:
                raise ValueError(f"category names hold at most {MAX_CATEGORY} bytes: {category!r}")
        for start in range(0, len(ids), CHUNK):
            rows = [
                {"id": int(i), "vector": v, "category": c}
                for i, v, c in zip(
                    ids[start : start + CHUNK],
                    vectors[start : start + CHUNK],
                    categories[start : start + CHUNK],
                    strict=True,
                )
            ]
            self._db().upsert(self.collection, rows)

    def delete(self, ids: np.ndarray) -> None:
        """Remove ids (unknown ones are ignored)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        for chunk in _chunks(ids):
            self._db().delete(self.collection, ids=chunk)

    # ---- reads -----------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, category: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids (m, k) padded with -1 and inner-product scores (m, k), within a category.

        Milvus answers at most 16,384 per query; a larger k is padded past that."""
        queries = np.asarray(queries, dtype=np.float32)
        queries = queries.reshape(1, -1) if queries.ndim == 1 else queries
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (m, {self.dim}); got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}")
        found = self._db().search(
            self.collection,
            data=list(np.ascontiguousarray(queries)),
            limit=min(k, MAX_TOPK),
            filter="" if category is None else f"category == {_literal(category)}",
            output_fields=["id"],
            search_params=self._search,
            consistency_level=CONSISTENCY,
        )
        return _topk(found, len(queries), k)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids``; KeyError naming the first unknown id."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found: dict[int, Any] = {}
        for chunk in _chunks(np.unique(ids)):
            for row in self._db().get(
                self.collection, ids=chunk, output_fields=["vector"], consistency_level=CONSISTENCY
            ):
                found[int(row["id"])] = row["vector"]
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"vector id {missing[0]} is not in the store")
        out = np.empty((len(ids), self.dim), np.float32)
        for row, vector_id in enumerate(ids.tolist()):
            out[row] = found[vector_id]
        return out

    def count(self) -> int:
        """Number of live vectors."""
        answer = self._db().query(
            self.collection, filter="", output_fields=["count(*)"], consistency_level=CONSISTENCY
        )
        return int(answer[0]["count(*)"])

    # ---- lifecycle -------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Flush: Milvus seals the growing segments (its log already holds every write)."""
        self._db().flush(self.collection)

    def close(self) -> None:
        """Close the connection (writes are already acknowledged, so durable); idempotent."""
        if self._client is None:
            return
        self._client.close()
        self._client = None
        if self.settings.lite:
            _release_lite(self.settings.uri)

    def drop(self) -> None:
        """Delete the collection and everything in it (a failed build's), then close."""
        self._db().drop_collection(self.collection)
        log.info("dropped Milvus collection %s at %s", self.collection, self.settings.uri)
        self.close()


def _release_lite(uri: str) -> None:
    with _LITE_LOCK:
        _LITE_USERS[uri] -= 1
        if _LITE_USERS[uri] > 0:
            return
        del _LITE_USERS[uri]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def _properties(dim: int, identity: dict[str, Any]) -> dict[str, str]:
    """The identity a collection carries, as Milvus's string properties."""
    return {
        "visnet.format": FORMAT,
        "visnet.dim": str(dim),
        "visnet.model_fingerprint": str(identity.get("model_fingerprint") or ""),
        "visnet.pca_fingerprint": str(identity.get("pca_fingerprint") or ""),
    }


def _check_identity(collection: str, saved: dict[str, str], expected: dict[str, str]) -> None:
    if saved.get("visnet.format") != FORMAT:
        raise StoreError(f"Milvus collection {collection!r} was not made by VisNet (no identity)")
    for key, value in expected.items():
        if saved.get(key) != value:
            what = key.removeprefix("visnet.").replace("_", " ")
            raise IndexMismatchError(
                f"Milvus collection {collection!r} holds vectors of {what} "
                f"{saved.get(key) or 'none'!s}; the index expects {value or 'none'}. Point the "
                "index at its own collection, or rebuild it"
            )


def _topk(found: list[list[dict]], m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Milvus's hits of ``m`` queries -> ids (m, k) padded with -1 and scores padded with -inf."""
    ids = np.full((m, k), -1, np.int64)
    scores = np.full((m, k), -np.inf, np.float32)
    for q, hits in enumerate(found):
        hits = hits[:k]
        ids[q, : len(hits)] = [h["id"] for h in hits]
        scores[q, : len(hits)] = [h["distance"] for h in hits]
    return ids, scores


def _literal(text: str) -> str:
    """A Milvus filter string literal: double-quoted, with backslashes and quotes escaped."""
    return json.dumps(text, ensure_ascii=False)


def _chunks(ids: np.ndarray) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK].tolist()
