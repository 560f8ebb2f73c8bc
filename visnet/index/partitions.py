"""One category's vectors: an exact (numpy) or an HNSW (hnswlib) partition, with save and load."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import hnswlib
import numpy as np

from visnet.io import fsync_file

__all__ = [
    "ExactPartition",
    "HnswPartition",
    "HnswParams",
    "Partition",
    "exact_topk",
    "pad_topk",
    "save_npy",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HnswParams:
    """hnswlib settings: graph degree, build and search beam widths, seed."""

    M: int = 32
    ef_construction: int = 200
    ef: int = 48
    seed: int = 100


class Partition(Protocol):
    """What the embedded store needs from one category's index."""

    kind: str

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def delete(self, ids: np.ndarray) -> None: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def get(self, ids: np.ndarray) -> np.ndarray: ...
    def has(self, ids: np.ndarray) -> np.ndarray: ...
    def ids(self) -> np.ndarray: ...
    def items(self) -> tuple[np.ndarray, np.ndarray]: ...
    def count(self) -> int: ...
    def save(self, folder: Path, stem: str) -> list[Path]: ...


def pad_topk(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (m, j) results to (m, k) with id -1 and score -inf."""
    m, j = ids.shape
    if j == k:
        return ids, scores
    if j > k:
        return ids[:, :k], scores[:, :k]
    out_ids = np.full((m, k), -1, dtype=np.int64)
    out_scores = np.full((m, k), -np.inf, dtype=np.float32)
    out_ids[:, :j], out_scores[:, :j] = ids, scores
    return out_ids, out_scores


def exact_topk(
    ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of each query row over ``vectors`` (n, d) named by ``ids``:
    ids (m, k) padded with -1 and scores (m, k), best first. The one exact search: an exact
    partition's, and a filter's over the vectors that pass it."""
    n = len(ids)
    j = min(k, n)
    if j == 0:
        return pad_topk(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0)), k)
    scores = queries @ vectors.T
    top = np.argpartition(-scores, j - 1, axis=1)[:, :j] if j < n else None
    if top is None:
        top = np.broadcast_to(np.arange(n), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    found = ids[top], np.take_along_axis(top_scores, order, axis=1).astype(np.float32)
    return pad_topk(*found, k)


def save_npy(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` to ``path`` and fsync it (a snapshot's file)."""
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    return path


class ExactPartition:
    """A dense matrix of vectors; brute-force inner product; deletes swap in the last row."""

    kind = "exact"

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._matrix = np.empty((capacity, dim), dtype=np.float32)
        self._ids = np.empty(capacity, dtype=np.int64)
        self._n = 0
        self._slot: dict[int, int] = {}

    def count(self) -> int:
        return self._n

    def has(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((int(i) in self._slot for i in ids), dtype=bool, count=len(ids))

    def _grow(self, need: int) -> None:
        capacity = max(need, 2 * len(self._ids))
        matrix = np.empty((capacity, self.dim), dtype=np.float32)
        matrix[: self._n] = self._matrix[: self._n]
        ids = np.empty(capacity, dtype=np.int64)
        ids[: self._n] = self._ids[: self._n]
        self._matrix, self._ids = matrix, ids

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self._n + len(ids) > len(self._ids):
            self._grow(self._n + len(ids))
        for i, vector in zip(ids.tolist(), vectors, strict=True):
            slot = self._slot.get(i)
            if slot is None:
                slot, self._n = self._n, self._n + 1
                self._slot[i] = slot
                self._ids[slot] = i
            self._matrix[slot] = vector

    def delete(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            slot = self._slot.pop(i, None)
            if slot is None:
                continue
            last = self._n - 1
            if slot != last:
                self._matrix[slot] = self._matrix[last]
                self._ids[slot] = self._ids[last]
                self._slot[int(self._ids[slot])] = slot
            self._n = last

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_topk(self._ids[: self._n], self._matrix[: self._n], queries, k)

    def get(self, ids: np.ndarray) -> np.ndarray:
        return self._matrix[[self._slot[int(i)] for i in ids]].copy()

    def ids(self) -> np.ndarray:
        return self._ids[: self._n].copy()

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids(), self._matrix[: self._n].copy()

    def save(self, folder: Path, stem: str) -> list[Path]:
        ids, vectors = self.items()
        return [
            save_npy(folder / f"{stem}.ids.npy", ids),
            save_npy(folder / f"{stem}.vectors.npy", vectors),
        ]

    @classmethod
    def load(cls, folder: Path, stem: str, dim: int) -> ExactPartition:
        ids = np.load(folder / f"{stem}.ids.npy")
        part = cls(dim, capacity=max(1024, 2 * len(ids)))
        part.upsert(ids, np.load(folder / f"{stem}.vectors.npy"))
        return part


class HnswPartition:
    """An hnswlib graph (space 'ip'); each write gets fresh internal labels.

    hnswlib cannot safely re-add a label it has marked deleted while deleted slots are being
    reused (``replace_deleted``), so ids map to never-reused labels: an update marks the old
    label deleted and inserts the vector under a new one, which may take a freed slot.
    """

    kind = "hnsw"

    def __init__(self, dim: int, params: HnswParams, capacity: int = 1024) -> None:
        self.dim, self.params = dim, params
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(
            capacity,
            M=params.M,
            ef_construction=params.ef_construction,
            random_seed=params.seed,
            allow_replace_deleted=True,
        )
        self.index.set_ef(params.ef)
        self._label_of: dict[int, int] = {}
        self._id_of_label = np.full(capacity, -1, dtype=np.int64)
        self._next_label = 0

    def count(self) -> int:
        return len(self._label_of)

    def set_ef(self, ef: int) -> None:
        """Change the search beam width (recall against speed)."""
        self.params = replace(self.params, ef=ef)
        self.index.set_ef(ef)

    def has(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((int(i) in self._label_of for i in ids), dtype=bool, count=len(ids))

    def _reserve(self, n: int) -> np.ndarray:
        if self.count() + n > self.index.get_max_elements():  # deleted slots are reused
            self.index.resize_index(max(2 * self.index.get_max_elements(), self.count() + n))
        labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
        self._next_label += n
        if self._next_label > len(self._id_of_label):
            grown = np.full(max(self._next_label, 2 * len(self._id_of_label)), -1, np.int64)
            grown[: len(self._id_of_label)] = self._id_of_label
            self._id_of_label = grown
        return labels

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.delete(ids)
        labels = self._reserve(len(ids))
        self.index.add_items(vectors, labels, replace_deleted=True)
        self._id_of_label[labels] = ids
        self._label_of.update(zip(ids.tolist(), labels.tolist(), strict=True))

    def delete(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            label = self._label_of.pop(i, None)
            if label is not None:
                self.index.mark_deleted(label)
                self._id_of_label[label] = -1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        j = min(k, len(self._label_of))
        if j == 0:
            return pad_topk(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0)), k)
        threads = 1 if len(queries) < 16 else -1
        try:
            labels, dist = self.index.knn_query(queries, j, threads)  # positional: ~1 us less
        except RuntimeError:  # fewer than j reachable (many deletions): search wider once
            log.warning("hnsw search found fewer than %d results; retrying with ef=%d", j, j * 8)
            self.index.set_ef(max(self.params.ef, j * 8, self.count()))
            try:
                labels, dist = self.index.knn_query(queries, j, num_threads=threads)
            finally:
                self.index.set_ef(self.params.ef)
        # one query a call is the service's case: no copy we can avoid (hnswlib's float32
        # distances become scores in place; its uint64 labels index the id table directly)
        return pad_topk(self._id_of_label[labels], np.subtract(1.0, dist, out=dist), k)

    def get(self, ids: np.ndarray) -> np.ndarray:
        labels = [self._label_of[int(i)] for i in ids]
        return np.asarray(self.index.get_items(labels, return_type="numpy"), dtype=np.float32)

    def ids(self) -> np.ndarray:
        return np.fromiter(self._label_of.keys(), dtype=np.int64, count=self.count())

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids()
        return ids, self.get(ids)

    def save(self, folder: Path, stem: str) -> list[Path]:
        path = folder / f"{stem}.hnsw"
        self.index.save_index(str(path))
        fsync_file(path)
        ids = np.fromiter(self._label_of.keys(), dtype=np.int64, count=self.count())
        labels = np.fromiter(self._label_of.values(), dtype=np.int64, count=self.count())
        table = np.stack([ids, labels]) if len(ids) else np.empty((2, 0), np.int64)
        return [path, save_npy(folder / f"{stem}.labels.npy", table)]

    @classmethod
    def load(cls, folder: Path, stem: str, dim: int, params: HnswParams) -> HnswPartition:
        part = cls.__new__(cls)
        part.dim, part.params = dim, params
        part.index = hnswlib.Index(space="ip", dim=dim)
        part.index.load_index(str(folder / f"{stem}.hnsw"), allow_replace_deleted=True)
        part.index.set_ef(params.ef)
        ids, labels = np.load(folder / f"{stem}.labels.npy")
        part._label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))
        # Deleted labels still sit in the graph; new labels must not collide with them.
        known = part.index.get_ids_list()
        part._next_label = int(max(known)) + 1 if len(known) else 0
        part._id_of_label = np.full(max(part._next_label, 1024), -1, dtype=np.int64)
        part._id_of_label[labels] = ids
        return part

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, params: HnswParams) -> HnswPartition:
        """A new graph holding ``vectors`` under ``ids`` (the exact-to-HNSW switch)."""
        part = cls(vectors.shape[1], params, capacity=max(1024, 2 * len(ids)))
        part.upsert(ids, vectors)
        return part
