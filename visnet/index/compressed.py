"""A compressed partition for large categories: a FAISS IVF over compact codes (2-bit RaBitQ by
default), its candidates re-ranked from float16 copies of the vectors in a memory-mapped file.

Why this design (``docs/SCALE.md`` keeps the measurements): on our tightly clustered vectors a
compact code alone finds the right neighbourhood but not the order inside it (IVF-PQ64 alone:
recall@10 0.21-0.31), while an exact re-rank of some candidates restores it; float16 copies rank
like float32 (8-bit copies cap recall@10 near 0.96), and kept in a file they cost the page
cache, not the process's memory. 2-bit RaBitQ codes (148 bytes for 512-D) need 4x fewer
candidates than 1-bit ones, or PQ's, for the same recall. An IVF removes vectors for real
(``remove_ids``), where a FAISS HNSW graph can only hide them, and it trains in seconds, not the
hour a 10M-vector graph takes to build on two cores.

Labels are rows: each upsert appends its vectors to the float16 file and adds them to the IVF
under their row numbers; a row is never rewritten, so a snapshot records only how many rows it
covers and shares the file with the live partition (see ``HalfRows``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import faiss
import numpy as np

from visnet.index.partitions import exact_topk, pad_topk, save_npy
from visnet.io import fsync_dir, fsync_file, make_folders

__all__ = ["CompressedParams", "CompressedPartition", "HalfRows"]

log = logging.getLogger(__name__)

_CHUNK = 65_536  # vectors per step when training, adding and re-ranking in bulk
_RERANK_BYTES = 8 << 20  # float32 candidates re-ranked at once (a batch stays in cache)
_PARALLEL_ROWS = 256  # FAISS calls on fewer rows run on one OpenMP thread (see ``_serial``)


@contextmanager
def _serial(rows: int) -> Iterator[None]:
    """One OpenMP thread for a FAISS call on few rows: starting a team costs more than the work
    (adding one vector: 7 ms with two threads on a busy 2-core machine, 14 us with one). The
    setting is the calling thread's own, so searches in other threads keep theirs."""
    if rows >= _PARALLEL_ROWS:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class CompressedParams:
    """The compressed partition's settings (``docs/SCALE.md`` measures them).

    ``codec``: the FAISS code after the IVF (``RaBitQ2``: 2 bits a dimension; ``RaBitQ``,
    ``RaBitQ4``, ``SQ4``, ``SQ8``, ``PQ64`` ... are accepted); ``coarse``: how a query finds its
    lists, ``flat`` (exact, over every list centre) or ``hnsw`` (a graph over them, for many
    lists); ``nlist``: IVF lists, 0 for about 2 sqrt(n) (at most one per 39 training vectors,
    FAISS's minimum); ``nprobe``: lists searched per query; ``rerank``: candidates re-scored
    from float16 per wanted result at k=10 (``candidates``); ``min_train``: below this many
    vectors there is no IVF and search is exact over the float16 rows; ``train_per_list``:
    vectors sampled (seeded) to train, per list (k-means' cost grows with sample x lists);
    ``niter``: k-means iterations.
    """

    codec: str = "RaBitQ2"
    coarse: str = "flat"
    nlist: int = 0
    nprobe: int = 16
    rerank: int = 16  # 8 sufficed to 1M vectors; 3M and 10M need 16 for recall@10 >= 0.95
    min_train: int = 1024
    train_per_list: int = 64
    niter: int = 10
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("nprobe", "rerank", "min_train", "train_per_list", "niter"):
            if getattr(self, name) < 1:
                raise ValueError(f"compressed {name} must be at least 1; got {getattr(self, name)}")
        if self.nlist < 0:
            raise ValueError(f"compressed nlist must be 0 (automatic) or more; got {self.nlist}")
        if self.coarse not in ("flat", "hnsw"):
            raise ValueError(f"compressed coarse must be 'flat' or 'hnsw'; got {self.coarse!r}")

    @classmethod
    def from_dict(cls, saved: dict) -> CompressedParams:
        """Settings as ``asdict`` wrote them; a name this version lacks is left out, and one
        that was added since takes its default."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in saved.items() if name in known})

    def candidates(self, k: int) -> int:
        """Candidates to re-rank for k results: ``rerank`` x k at k=10, growing as sqrt(k) (a
        longer list needs fewer per result: at 100,000 vectors, 1-bit codes need 16x at k=10
        and 4x at k=88 for recall 0.96)."""
        return max(k, math.ceil(self.rerank * math.sqrt(10 * k)))

    def lists_for(self, n: int) -> int:
        """IVF lists for ``n`` vectors: ``nlist``, or about 2 sqrt(n), never more than the
        training sample allows (39 vectors a list)."""
        wanted = self.nlist or max(1, int(2 * math.sqrt(n)))
        return max(1, min(wanted, self.sample_for(n) // 39))

    def sample_for(self, n: int) -> int:
        """Training vectors for ``n`` vectors: ``train_per_list`` for each list wanted (FAISS's
        minimum is 39), all of them when there are fewer."""
        wanted = self.nlist or max(1, int(2 * math.sqrt(n)))
        return min(n, max(self.train_per_list, 39) * wanted)


class HalfRows:
    """Append-only float16 rows, their ids and inverse norms; the rows in a file, memory-mapped
    (``path``) or in memory (``path=None``). A row is never rewritten, so a snapshot that covers
    the first ``n`` rows stays valid while later ones are appended (reopening cuts back to it)."""

    def __init__(self, dim: int, path: Path | None = None, n: int = 0, capacity: int = 1024):
        self.dim, self.path, self.n = dim, path, n
        self.ids = np.full(max(capacity, n), -1, dtype=np.int64)
        self.inv_norm = np.zeros(max(capacity, n), dtype=np.float32)
        self.vectors = self._map(max(capacity, n))

    def _map(self, capacity: int) -> np.ndarray:
        if self.path is None:
            grown = np.empty((capacity, self.dim), dtype=np.float16)
            if self.n:
                grown[: self.n] = self.vectors[: self.n]
            return grown
        row_bytes, created = 2 * self.dim, not self.path.exists()
        if created or self.path.stat().st_size < capacity * row_bytes:
            with open(self.path, "ab") as f:
                f.truncate(capacity * row_bytes)
        if created:  # a snapshot will name the file: its folder entry must survive a crash
            fsync_dir(self.path.parent)
        return np.memmap(self.path, dtype=np.float16, mode="r+", shape=(capacity, self.dim))

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Store ``vectors`` under ``ids``; return their rows (labels)."""
        if self.n + len(ids) > len(self.ids):
            self._grow(max(self.n + len(ids), 2 * len(self.ids)))
        rows = np.arange(self.n, self.n + len(ids), dtype=np.int64)
        half = vectors.astype(np.float16)
        self.vectors[rows[0] : rows[-1] + 1] = half
        norms = np.linalg.norm(half.astype(np.float32), axis=1)
        self.inv_norm[rows] = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self.ids[rows] = ids
        self.n += len(ids)
        return rows

    def _grow(self, capacity: int) -> None:
        if isinstance(self.vectors, np.memmap):
            self.vectors.flush()
        self.vectors = self._map(capacity)
        for name in ("ids", "inv_norm"):
            old = getattr(self, name)
            grown = np.full(capacity, -1 if name == "ids" else 0, dtype=old.dtype)
            grown[: self.n] = old[: self.n]
            setattr(self, name, grown)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Float32 unit vectors of ``rows`` (the float16 copy, re-normalised)."""
        return self.vectors[rows].astype(np.float32) * self.inv_norm[rows, None]

    def live(self) -> np.ndarray:
        """Rows that hold a live vector."""
        return np.flatnonzero(self.ids[: self.n] >= 0)

    def flush(self) -> None:
        """Make the rows durable (before a snapshot names them)."""
        if isinstance(self.vectors, np.memmap):
            self.vectors.flush()
            assert self.path is not None
            fsync_file(self.path)

    def save(self, folder: Path, stem: str) -> list[Path]:
        """Flush the rows; write ids and norms of the first ``n`` rows beside the snapshot."""
        self.flush()
        return [
            save_npy(folder / f"{stem}.rowids.npy", self.ids[: self.n]),
            save_npy(folder / f"{stem}.norms.npy", self.inv_norm[: self.n]),
        ]

    @classmethod
    def load(cls, folder: Path, stem: str, dim: int, path: Path) -> HalfRows:
        """The rows a snapshot saved; rows the file holds past them are free to overwrite."""
        ids = np.load(folder / f"{stem}.rowids.npy")
        rows = cls.__new__(cls)
        rows.dim, rows.path, rows.n = dim, path, len(ids)
        capacity = max(1024, path.stat().st_size // (2 * dim), rows.n)
        rows.ids = np.full(capacity, -1, dtype=np.int64)
        rows.ids[: rows.n] = ids
        rows.inv_norm = np.zeros(capacity, dtype=np.float32)
        rows.inv_norm[: rows.n] = np.load(folder / f"{stem}.norms.npy")
        rows.vectors = rows._map(capacity)
        return rows


def _new_ivf(dim: int, params: CompressedParams, nlist: int) -> faiss.Index:
    coarse = "_HNSW32" if params.coarse == "hnsw" else ""
    spec = f"IVF{nlist}{coarse},{params.codec}"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed, ivf.cp.niter = params.seed, params.niter
    # train on the whole (seeded) sample we pass; lists_for keeps 39 a list, but for tiny data
    ivf.cp.max_points_per_centroid, ivf.cp.min_points_per_centroid = 1 << 30, 1
    return index


class CompressedPartition:
    """IVF codes in memory, float16 rows in a file; deletes remove codes at once.

    ``rows_dir``: the folder for the row file (None: rows in memory, for a store without a
    folder). Until ``min_train`` vectors arrive there is no IVF and search is exact.
    """

    kind = "compressed"

    def __init__(
        self, dim: int, params: CompressedParams, rows_dir: Path | None = None, capacity: int = 1024
    ) -> None:
        self.dim, self.params, self.rows_dir = dim, params, rows_dir
        path = None
        if rows_dir is not None:
            path = make_folders(rows_dir) / f"rows-{uuid.uuid4().hex}.f16"
        self.rows = HalfRows(dim, path, capacity=capacity)
        self.index: faiss.Index | None = None
        self.trained_at = 0  # live vectors when the IVF was trained
        self._label_of: dict[int, int] = {}

    # ---- state -----------------------------------------------------------------------------

    def count(self) -> int:
        return len(self._label_of)

    def has(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((int(i) in self._label_of for i in ids), dtype=bool, count=len(ids))

    def ids(self) -> np.ndarray:
        return np.fromiter(self._label_of.keys(), dtype=np.int64, count=self.count())

    def set_search(self, nprobe: int, rerank: int) -> None:
        """Change lists searched and re-rank depth (recall against speed)."""
        self.params = replace(self.params, nprobe=nprobe, rerank=rerank)
        if self.index is not None:
            faiss.extract_index_ivf(self.index).nprobe = nprobe

    def wants_rebuild(self) -> bool:
        """Whether the partition outgrew its IVF (4x the vectors it was trained on, and twice
        the lists would be wanted) or its row file is mostly dead rows."""
        n = self.count()
        if self.index is None:
            return False
        ivf = faiss.extract_index_ivf(self.index)
        outgrown = n > 4 * self.trained_at and self.params.lists_for(n) >= 2 * ivf.nlist
        return outgrown or self.rows.n > 2 * n + self.params.min_train

    # ---- writes ----------------------------------------------------------------------------

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.delete(ids)
        labels = self.rows.append(ids, vectors)
        self._label_of.update(zip(ids.tolist(), labels.tolist(), strict=True))
        if self.index is not None:
            with _serial(len(labels)):
                self.index.add_with_ids(vectors, labels)
        elif self.count() >= self.params.min_train:
            self._train()

    def delete(self, ids: np.ndarray) -> None:
        labels = [self._label_of.pop(i) for i in ids.tolist() if i in self._label_of]
        if not labels:
            return
        dead = np.asarray(labels, dtype=np.int64)
        self.rows.ids[dead] = -1
        if self.index is not None:
            with _serial(len(dead)):
                self.index.remove_ids(faiss.IDSelectorArray(dead))

    def _train(self) -> None:
        """Train an IVF on a seeded sample of the live rows, then add every live row."""
        start = time.perf_counter()
        live = self.rows.live()
        n = len(live)
        rng = np.random.default_rng(self.params.seed)
        sample = np.sort(rng.choice(live, self.params.sample_for(n), replace=False))
        index = _new_ivf(self.dim, self.params, self.params.lists_for(n))
        index.train(self.rows.get(sample))
        hashtable = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # not in the stubs
        faiss.extract_index_ivf(index).set_direct_map_type(hashtable)  # removals without a scan
        faiss.extract_index_ivf(index).nprobe = self.params.nprobe
        for start in range(0, n, _CHUNK):
            rows = live[start : start + _CHUNK]
            index.add_with_ids(self.rows.get(rows), rows)
        self.index, self.trained_at = index, n
        log.info(
            "compressed partition: trained %s on %d of %d vectors, added them in %.1f s",
            faiss.extract_index_ivf(index).__class__.__name__,
            len(sample),
            n,
            time.perf_counter() - start,
        )

    # ---- reads -----------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        j = min(k, self.count())
        if j == 0:
            return pad_topk(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0)), k)
        if self.index is None:
            live = self.rows.live()
            return exact_topk(self.rows.ids[live], self.rows.get(live), queries, k)
        fetch = min(self.params.candidates(j), self.count())
        with _serial(len(queries)):
            labels = self.index.search(queries, fetch)[1]
            short = np.flatnonzero((labels >= 0).sum(axis=1) < j)
            if len(short):  # the probed lists held fewer than j live vectors: search them all
                every = faiss.SearchParametersIVF()
                every.nprobe = faiss.extract_index_ivf(self.index).nlist
                labels[short] = self.index.search(queries[short], fetch, params=every)[1]
        return pad_topk(*self._rerank(queries, labels, j), k)

    def _rerank(
        self, queries: np.ndarray, labels: np.ndarray, j: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate rows from their float16 copies; the best j of each."""
        step = max(1, _RERANK_BYTES // (4 * labels.shape[1] * self.dim))
        out_ids = np.empty((len(queries), j), dtype=np.int64)
        out_scores = np.empty((len(queries), j), dtype=np.float32)
        for a in range(0, len(queries), step):
            cand = labels[a : a + step]
            safe = np.maximum(cand, 0)
            vectors = self.rows.vectors[safe].astype(np.float32)
            scores = np.matmul(vectors, queries[a : a + step, :, None])[..., 0]
            scores *= self.rows.inv_norm[safe]
            scores[cand < 0] = -np.inf
            top = np.argpartition(-scores, j - 1, axis=1)[:, :j] if j < cand.shape[1] else None
            top = np.argsort(-scores, axis=1)[:, :j] if top is None else top
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            out_scores[a : a + step] = np.take_along_axis(top_scores, order, axis=1)
            out_ids[a : a + step] = self.rows.ids[np.take_along_axis(safe, top, axis=1)]
        out_ids[np.isneginf(out_scores)] = -1
        return out_ids, out_scores

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors: float16 copies, re-normalised (within about 1e-3 of the input)."""
        labels = np.fromiter((self._label_of[int(i)] for i in ids), np.int64, count=len(ids))
        return self.rows.get(labels)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        live = self.rows.live()
        return self.rows.ids[live].copy(), self.rows.get(live)

    # ---- building, saving, loading ---------------------------------------------------------

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors_of: Callable[[np.ndarray], np.ndarray],
        dim: int,
        params: CompressedParams,
        rows_dir: Path | None,
    ) -> CompressedPartition:
        """A partition holding ``ids``, their vectors fetched ``_CHUNK`` at a time (the promotion
        from HNSW never holds a large category's float32 vectors twice)."""
        part = cls(dim, params, rows_dir, capacity=max(1024, len(ids)))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            labels = part.rows.append(chunk, vectors_of(chunk))
            part._label_of.update(zip(chunk.tolist(), labels.tolist(), strict=True))
        if part.count() >= params.min_train:
            part._train()
        return part

    def rebuilt(self) -> CompressedPartition:
        """A new partition with the live vectors only (a fresh row file, a freshly trained IVF)."""
        return self.build(self.ids(), self.get, self.dim, self.params, self.rows_dir)

    def files(self) -> list[Path]:
        """Files outside the snapshot folder that this partition writes (its row file)."""
        return [self.rows.path] if self.rows.path is not None else []

    def save(self, folder: Path, stem: str) -> list[Path]:
        if self.rows.path is None:
            raise ValueError("a compressed partition with rows in memory cannot be saved")
        paths = self.rows.save(folder, stem)
        meta = {"rows_file": self.rows.path.name, "trained_at": self.trained_at}
        meta["params"] = asdict(self.params)
        if self.index is not None:
            faiss.write_index(self.index, str(folder / f"{stem}.ivf"))
            fsync_file(folder / f"{stem}.ivf")
            paths.append(folder / f"{stem}.ivf")
        (folder / f"{stem}.json").write_text(json.dumps(meta))
        fsync_file(folder / f"{stem}.json")
        return [*paths, folder / f"{stem}.json"]

    @classmethod
    def load(
        cls, folder: Path, stem: str, dim: int, params: CompressedParams, rows_dir: Path
    ) -> CompressedPartition:
        """The partition a snapshot saved; search settings from ``params``, the rest as built."""
        meta = json.loads((folder / f"{stem}.json").read_text())
        saved = CompressedParams.from_dict(meta["params"])
        part = cls.__new__(cls)
        part.dim, part.rows_dir = dim, rows_dir
        part.params = replace(saved, nprobe=params.nprobe, rerank=params.rerank)
        part.rows = HalfRows.load(folder, stem, dim, rows_dir / meta["rows_file"])
        part.trained_at = meta["trained_at"]
        part.index = None
        if os.path.exists(folder / f"{stem}.ivf"):
            part.index = faiss.read_index(str(folder / f"{stem}.ivf"))
            faiss.extract_index_ivf(part.index).nprobe = part.params.nprobe
        live = part.rows.live()
        part._label_of = dict(zip(part.rows.ids[live].tolist(), live.tolist(), strict=True))
        return part
