"""The vector-store protocol that the embedded store and the Milvus store implement.

A store holds unit-norm float32 vectors under int64 ids, each with one category, and answers
inner-product top-k queries, optionally within one category. Writes are visible to the very next
query and are durable once the call returns.

How Milvus maps onto it (`visnet.index.milvus`; the store is chosen in `visnet.index.stores`):

- one store = one Milvus *collection* with fields ``id INT64`` (primary key, ``auto_id=False``),
  ``vector FLOAT_VECTOR(dim)`` and ``category VARCHAR`` (on a cluster also the *partition key*);
- the index type is a setting (FLAT on Milvus Lite, HNSW with ``M`` and ``efConstruction`` from
  the embedded store's defaults on a cluster, ``ef`` as a search parameter), metric ``IP``;
- ``upsert`` = ``upsert`` (Milvus upsert is delete + insert, like ours); ``delete`` = delete by
  ids; ``search(category=c)`` = ``search(..., filter='category == "c"')``, the same expression on
  Lite and on a cluster; every read asks for ``consistency_level="Strong"``, so a write is seen by
  the next query;
- ``get`` = ``get(ids, output_fields=["vector"])``;
  ``count`` = ``query(output_fields=["count(*)"])``;
- ``snapshot`` = ``flush()``: Milvus keeps its own log (the message queue) and seals segments, so
  there is no local WAL to truncate.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["IndexMismatchError", "StoreError", "VectorStore", "check_batch"]


class StoreError(RuntimeError):
    """A vector store cannot do what was asked (bad state on disk, locked, closed)."""


class IndexMismatchError(ValueError):
    """An index folder was made by another model or PCA than the one opening it."""


@runtime_checkable
class VectorStore(Protocol):
    """Unit-norm vectors under int64 ids, one category each; score = inner product."""

    dim: int

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, categories: list[str]) -> None:
        """Insert or replace ``ids`` (n,) int64 with ``vectors`` (n, dim) float32; durable."""
        ...

    def delete(self, ids: np.ndarray) -> None:
        """Remove ``ids``; unknown ids are ignored; durable."""
        ...

    def search(
        self, queries: np.ndarray, k: int, category: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query row: ids (m, k) int64 padded with -1, scores (m, k) float32.

        Padding scores are ``-inf``. ``category=None`` searches every category.
        """
        ...

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (n, dim) float32; KeyError naming a missing id."""
        ...

    def count(self) -> int:
        """Number of live vectors."""
        ...

    def snapshot(self) -> None:
        """Persist a consistent image of the store and truncate its write-ahead log."""
        ...

    def close(self) -> None:
        """Release files and locks (no snapshot: acknowledged writes are already durable)."""
        ...


def check_batch(
    ids: np.ndarray, vectors: np.ndarray, categories: list[str], dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an upsert batch at the edge (shapes, distinct ids, finite unit-norm rows); return
    ids as int64 and vectors as float32."""
    ids = np.asarray(ids)
    vectors = np.asarray(vectors, dtype=np.float32)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array; got shape {ids.shape} {ids.dtype}")
    if vectors.ndim != 2 or vectors.shape != (len(ids), dim):
        raise ValueError(f"vectors must have shape ({len(ids)}, {dim}); got {vectors.shape}")
    if len(categories) != len(ids):
        raise ValueError(f"got {len(categories)} categories for {len(ids)} ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids in one upsert must be distinct")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("vectors contain NaN or infinity")
    norms = np.linalg.norm(vectors, axis=1)
    if len(norms) and np.abs(norms - 1.0).max() > 1e-3:
        raise ValueError(
            f"vectors must be unit-norm; got norms from {norms.min():.4f} "
            f"to {norms.max():.4f} (normalise before upserting)"
        )
    return ids.astype(np.int64), np.ascontiguousarray(vectors)
