"""The embedded vector store: one partition per category, a write-ahead log, atomic snapshots."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from visnet.index.compressed import CompressedParams, CompressedPartition
from visnet.index.partitions import (
    ExactPartition,
    HnswParams,
    HnswPartition,
    Partition,
    pad_topk,
)
from visnet.index.protocol import IndexMismatchError, StoreError, check_batch
from visnet.index.wal import DELETE, WriteAheadLog
from visnet.io import replace_folder, write_json_atomic

__all__ = ["EmbeddedStore", "ReadWriteLock", "StoreSettings"]

log = logging.getLogger(__name__)

FORMAT, VERSION = "visnet-vectors", 1
StoreKind = Literal["auto", "exact", "hnsw", "compressed"]
KINDS = ("auto", "exact", "hnsw", "compressed")


@dataclass(frozen=True)
class StoreSettings:
    """How partitions are built.

    ``auto``: a category's partition is exact up to ``exact_threshold`` vectors, HNSW past it,
    and compressed (IVF codes in memory, float16 rows memory-mapped, ``compressed.py``) past
    ``compressed_threshold`` (None: never). The other kinds use one kind for every category.
    The default compressed threshold is where an HNSW partition's 2.4 KB a 512-D vector would
    pass about 5 GB of memory (``docs/SCALE.md``: its recall and speed against HNSW's).
    """

    kind: StoreKind = "auto"
    exact_threshold: int = 20_000
    compressed_threshold: int | None = 2_000_000
    hnsw: HnswParams = field(default_factory=HnswParams)
    compressed: CompressedParams = field(default_factory=CompressedParams)
    wal_max_bytes: int = 256 << 20  # a write past this takes a snapshot (bounds replay time)
    # False: writes skip the log and only a snapshot keeps them; for a bulk load into a folder
    # that is thrown away unless it ends with a snapshot (`visnet index build`'s staging folder)
    log_writes: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"store kind must be one of {', '.join(KINDS)}; got {self.kind!r}")

    def to_manifest(self) -> dict:
        """The settings an index folder's manifest keeps (how its partitions are built)."""
        return {
            "kind": self.kind,
            "exact_threshold": self.exact_threshold,
            "compressed_threshold": self.compressed_threshold,
            "hnsw": asdict(self.hnsw),
            "compressed": asdict(self.compressed),
        }

    @classmethod
    def from_manifest(cls, saved: dict) -> StoreSettings:
        """Settings from ``to_manifest``'s dict; keys an older manifest lacks keep defaults."""
        default = cls()
        return cls(
            kind=saved["kind"],
            exact_threshold=saved["exact_threshold"],
            compressed_threshold=saved.get("compressed_threshold", default.compressed_threshold),
            hnsw=HnswParams(**saved["hnsw"]),
            compressed=CompressedParams.from_dict(saved.get("compressed", {})),
        )


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers.

    ``read()`` and ``write()`` hand out one reusable guard each, not a generator per call: every
    search takes the read lock, so its cost is part of the store's overhead over hnswlib.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writers_waiting = 0
        self._writing = False
        self._read, self._write = _Reading(self), _Writing(self)

    def read(self) -> _Reading:
        """``with lock.read():`` shares the lock with other readers."""
        return self._read

    def write(self) -> _Writing:
        """``with lock.write():`` holds it alone, once current readers are done."""
        return self._write


class _Reading:
    __slots__ = ("rw",)

    def __init__(self, rw: ReadWriteLock) -> None:
        self.rw = rw

    def __enter__(self) -> None:
        rw = self.rw
        with rw._mutex:
            while rw._writing or rw._writers_waiting:
                rw._cond.wait()
            rw._readers += 1

    def __exit__(self, *exc: object) -> None:
        rw = self.rw
        with rw._mutex:
            rw._readers -= 1
            if not rw._readers and rw._writers_waiting:  # readers only ever wait for writers
                rw._cond.notify_all()


class _Writing:
    __slots__ = ("rw",)

    def __init__(self, rw: ReadWriteLock) -> None:
        self.rw = rw

    def __enter__(self) -> None:
        rw = self.rw
        with rw._mutex:
            rw._writers_waiting += 1
            while rw._writing or rw._readers:
                rw._cond.wait()
            rw._writers_waiting -= 1
            rw._writing = True

    def __exit__(self, *exc: object) -> None:
        rw = self.rw
        with rw._mutex:
            rw._writing = False
            rw._cond.notify_all()


def _lock_folder(path: Path) -> TextIO:
    """Hold an exclusive flock on ``path/LOCK``: one open store per folder (the kernel drops it
    if the process dies)."""
    lock_file = open(path / "LOCK", "a")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreError(
            f"vector store {path} is open elsewhere (another process or object); close it first"
        ) from None
    return lock_file


class EmbeddedStore:
    """A ``VectorStore`` in this process; ``path=None`` keeps it in memory only.

    Folder layout::

        LOCK                 flock'd while a process has the store open (one writer process)
        CURRENT              {"snapshot": "snap-<lsn>"}, replaced atomically: the live snapshot
        snap-<lsn>/          manifest.json + one partition's files per category (p0000.*, ...)
        wal.log              writes after that snapshot (see ``wal.py``)
        rows/                compressed partitions' float16 rows (append-only, memory-mapped),
                             shared by a snapshot and the live partition: each snapshot records
                             how many rows it covers; a file that no snapshot or partition uses
                             is removed at the next snapshot or open

    A write is logged (fsync) before it is applied in memory and before the call returns, so a crash
    loses nothing acknowledged; opening loads ``CURRENT``'s snapshot and replays log records with a
    larger lsn. A snapshot is written to ``tmp-*``, fsync'd, renamed, and only then named by
    ``CURRENT``; the log is emptied afterwards, so a crash at any point leaves a loadable image.

    Threads: searches share a readers-writer lock and run in parallel (hnswlib and numpy release the
    GIL). Writers queue on a mutex, log and fsync while searches go on, then take the lock
    exclusively only to apply the change, since hnswlib cannot insert while searching. A snapshot
    holds the writers' mutex and a read lock: it stops writes, not searches.
    In ``auto`` mode a category that passes ``exact_threshold`` is rebuilt as HNSW, and one that
    passes ``compressed_threshold`` as a compressed partition, by the write that crossed it: the
    build holds a read lock (searches go on, about 2 s per 10,000 512-D vectors for HNSW) and
    the new partition replaces the old under the write lock. A compressed partition that
    outgrew its IVF, or whose row file is mostly deleted rows, is rebuilt the same way.
    """

    def __init__(
        self, dim: int, path: str | Path | None = None, settings: StoreSettings | None = None
    ) -> None:
        self.dim = dim
        self.settings = settings or StoreSettings()
        self.path = Path(path) if path is not None else None
        self._parts: dict[str, Partition] = {}
        self._rows_dir = self.path / "rows" if self.path is not None else None
        self._snapshot_files: set[Path] = set()  # row files the live snapshot names
        self._lock = ReadWriteLock()
        self._writer = threading.Lock()  # one writer at a time; readers go on while it logs
        self._wal: WriteAheadLog | None = None
        self._lock_file: TextIO | None = None
        self._closed = False
        if self.path is not None:
            self._open_folder(self.path)

    # ---- opening ---------------------------------------------------------------------------

    def _open_folder(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_folder(path)
        try:
            lsn = self._load_snapshot(path)
            self._snapshot_files = self._row_files()
            self._wal = WriteAheadLog(path / "wal.log")
            self._wal.set_last_lsn(lsn)
            replayed = self._replay(self._wal, lsn)
            self._remove_stray_rows()
        except BaseException:
            self._lock_file.close()
            raise
        log.info(
            "opened vector store %s: %d vectors, %d log records replayed",
            path,
            self.count(),
            replayed,
        )

    def _replay(self, wal: WriteAheadLog, after_lsn: int) -> int:
        replayed = 0
        for record in wal.replay(after_lsn):
            if record.op == DELETE:
                self._apply_delete(record.ids)
            else:
                assert record.vectors is not None and record.categories is not None
                self._apply_upsert(record.ids, record.vectors, record.categories)
                self._promote(dict.fromkeys(record.categories))
            replayed += 1
        return replayed

    def _load_snapshot(self, path: Path) -> int:
        current = path / "CURRENT"
        name = json.loads(current.read_text())["snapshot"] if current.exists() else None
        for stray in path.glob("*-*"):
            if stray.is_dir() and stray.name != name and stray.name.startswith(("snap-", "tmp-")):
                shutil.rmtree(stray)
        if name is None:
            return 0
        folder = path / name
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["dim"] != self.dim:
            raise IndexMismatchError(
                f"vector store {path} holds {manifest['dim']}-D vectors; opened as {self.dim}-D"
            )
        for entry in manifest["partitions"]:
            self._parts[entry["category"]] = self._load_partition(folder, entry)
        return int(manifest["lsn"])

    def _load_partition(self, folder: Path, entry: dict) -> Partition:
        if entry["kind"] == "hnsw":
            params = replace(HnswParams(**entry["hnsw"]), ef=self.settings.hnsw.ef)
            return HnswPartition.load(folder, entry["stem"], self.dim, params)
        if entry["kind"] == "compressed":
            assert self._rows_dir is not None
            compressed = self.settings.compressed
            return CompressedPartition.load(
                folder, entry["stem"], self.dim, compressed, self._rows_dir
            )
        return ExactPartition.load(folder, entry["stem"], self.dim)

    def _row_files(self) -> set[Path]:
        parts = self._parts.values()
        return {f for p in parts if isinstance(p, CompressedPartition) for f in p.files()}

    def _remove_stray_rows(self) -> None:
        """Remove row files that neither the live snapshot nor a live partition uses (a
        partition rebuilt or emptied since)."""
        if self._rows_dir is None or not self._rows_dir.exists():
            return
        keep = self._snapshot_files | self._row_files()
        for stray in self._rows_dir.glob("rows-*"):
            if stray not in keep:
                stray.unlink()

    # ---- writes ----------------------------------------------------------------------------

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, categories: list[str]) -> None:
        """Insert or replace vectors; logged and fsync'd before it returns."""
        ids, vectors = check_batch(ids, vectors, categories, self.dim)
        if not len(ids):
            return
        with self._writer:
            self._check_open()
            self._log(lambda wal: wal.append_upsert(ids, vectors, list(categories)))
            with self._lock.write():
                self._apply_upsert(ids, vectors, list(categories))
            self._promote(dict.fromkeys(categories))
        self._maybe_snapshot()

    def delete(self, ids: np.ndarray) -> None:
        """Remove ids (unknown ones are ignored); logged and fsync'd before it returns."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return
        with self._writer:
            self._check_open()
            self._log(lambda wal: wal.append_delete(ids))
            with self._lock.write():
                self._apply_delete(ids)
        self._maybe_snapshot()

    def _log(self, append: Callable[[WriteAheadLog], int]) -> None:
        """Log a write durably; with `log_writes` off, only number it (the next snapshot's name)."""
        if self._wal is not None and self.settings.log_writes:
            append(self._wal)
        elif self._wal is not None:
            self._wal.set_last_lsn(self._wal.last_lsn + 1)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"vector store {self.path} is closed; open it again to write")

    def _apply_upsert(self, ids: np.ndarray, vectors: np.ndarray, categories: list[str]) -> None:
        cats = np.asarray(categories, dtype=object)
        for category in dict.fromkeys(categories):
            rows = np.flatnonzero(cats == category)
            for other, part in self._parts.items():
                if other != category:  # a product that changed category leaves its old one
                    part.delete(ids[rows][part.has(ids[rows])])
            found = self._parts.get(category)
            part = self._new_partition() if found is None else found
            part.upsert(ids[rows], vectors[rows])
            self._parts[category] = part

    def _apply_delete(self, ids: np.ndarray) -> None:
        for part in self._parts.values():
            part.delete(ids)

    def _new_partition(self) -> Partition:
        if self.settings.kind == "hnsw":
            return HnswPartition(self.dim, self.settings.hnsw)
        if self.settings.kind == "compressed":
            return CompressedPartition(self.dim, self.settings.compressed, self._rows_dir)
        return ExactPartition(self.dim)

    def _promotion(self, part: Partition) -> str | None:
        """The kind ``part`` should be rebuilt as, or None to keep it."""
        s, n = self.settings, part.count()
        auto = s.kind == "auto"
        big = s.compressed_threshold is not None and n > s.compressed_threshold
        if auto and part.kind != "compressed" and big:
            return "compressed"
        if auto and part.kind == "exact" and n > s.exact_threshold:
            return "hnsw"
        if isinstance(part, CompressedPartition) and part.wants_rebuild():
            return "compressed"
        return None

    def _promote(self, categories: Iterable[str]) -> None:
        """Rebuild the partitions of ``categories`` that passed a threshold; the caller holds
        the writers' mutex. The build holds a read lock, so searches go on meanwhile."""
        for category in categories:
            part = self._parts.get(category)
            kind = None if part is None else self._promotion(part)
            if part is None or kind is None:
                continue
            start = time.perf_counter()
            with self._lock.read():
                built = self._build(kind, part)
            with self._lock.write():
                self._parts[category] = built
            log.info(
                "category %r (%d vectors): rebuilt its %s partition as %s in %.1f s",
                category,
                part.count(),
                part.kind,
                kind,
                time.perf_counter() - start,
            )

    def _build(self, kind: str, part: Partition) -> Partition:
        if kind == "hnsw":
            return HnswPartition.build(*part.items(), self.settings.hnsw)
        if isinstance(part, CompressedPartition):
            return part.rebuilt()
        params = self.settings.compressed
        return CompressedPartition.build(part.ids(), part.get, self.dim, params, self._rows_dir)

    # ---- reads -----------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, category: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids (m, k) padded with -1 and inner-product scores (m, k), within a category."""
        if not (  # the common case (float32 rows, as a service passes them) skips the copies
            type(queries) is np.ndarray
            and queries.dtype == np.float32
            and queries.ndim == 2
            and queries.flags.c_contiguous
        ):
            queries = np.asarray(queries, dtype=np.float32)
            queries = queries.reshape(1, -1) if queries.ndim == 1 else queries
            queries = np.ascontiguousarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (m, {self.dim}); got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}")
        with self._lock.read():
            if category is not None:
                part = self._parts.get(category)
                if part is not None:
                    return part.search(queries, k)
                empty = np.empty((len(queries), 0))
                return pad_topk(empty.astype(np.int64), empty.astype(np.float32), k)
            return self._search_all(queries, k)

    def _search_all(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._parts) == 1:  # one category: its partition pads its own answer
            return next(iter(self._parts.values())).search(queries, k)
        found = [part.search(queries, k) for part in self._parts.values() if part.count()]
        if len(found) == 1:  # already (m, k), padded, float32
            return found[0]
        if not found:
            empty = np.empty((len(queries), 0))
            return pad_topk(empty.astype(np.int64), empty.astype(np.float32), k)
        ids = np.concatenate([f[0] for f in found], axis=1)
        scores = np.concatenate([f[1] for f in found], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids``; KeyError naming the first unknown id."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        todo = np.ones(len(ids), dtype=bool)
        with self._lock.read():
            for part in self._parts.values():
                rows = np.flatnonzero(todo)[part.has(ids[todo])]
                if len(rows):
                    out[rows] = part.get(ids[rows])
                    todo[rows] = False
        if todo.any():
            raise KeyError(f"vector id {int(ids[todo][0])} is not in the store")
        return out

    def set_ef(self, ef: int) -> None:
        """Change HNSW's search beam width in every partition (and for new ones)."""
        if ef < 1:
            raise ValueError(f"ef must be at least 1; got {ef}")
        with self._writer, self._lock.write():
            self.settings = replace(self.settings, hnsw=replace(self.settings.hnsw, ef=ef))
            for part in self._parts.values():
                if isinstance(part, HnswPartition):
                    part.set_ef(ef)

    def set_compressed_search(self, nprobe: int, rerank: int) -> None:
        """Change the compressed partitions' lists searched and re-rank depth (and new ones')."""
        if nprobe < 1 or rerank < 1:
            raise ValueError(f"nprobe and rerank must be at least 1; got {nprobe}, {rerank}")
        with self._writer, self._lock.write():
            compressed = replace(self.settings.compressed, nprobe=nprobe, rerank=rerank)
            self.settings = replace(self.settings, compressed=compressed)
            for part in self._parts.values():
                if isinstance(part, CompressedPartition):
                    part.set_search(nprobe, rerank)

    def count(self) -> int:
        """Number of live vectors."""
        return sum(part.count() for part in self._parts.values())

    def counts(self) -> dict[str, int]:
        """Live vectors per category."""
        return {c: p.count() for c, p in self._parts.items() if p.count()}

    def kinds(self) -> dict[str, str]:
        """The index kind ('exact', 'hnsw' or 'compressed') of each category's partition."""
        return {c: p.kind for c, p in self._parts.items() if p.count()}

    # ---- snapshots -------------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        if self._wal is not None and self._wal.size() > self.settings.wal_max_bytes:
            log.info(
                "write-ahead log passed %d bytes; taking a snapshot", self.settings.wal_max_bytes
            )
            self.snapshot()

    def snapshot(self) -> None:
        """Write every partition and a manifest atomically, name it in CURRENT, empty the log."""
        if self.path is None:
            raise StoreError("an in-memory store (path=None) cannot take a snapshot")
        with self._writer, self._lock.read():  # no writes meanwhile; searches go on
            self._check_open()
            assert self._wal is not None
            start = time.perf_counter()
            name = f"snap-{self._wal.last_lsn:020d}"
            if not (self.path / name).exists():
                self._write_snapshot(self.path, name)
            write_json_atomic(self.path / "CURRENT", {"snapshot": name})
            self._wal.truncate()
            for old in self.path.glob("snap-*"):
                if old.name != name:
                    shutil.rmtree(old)
            self._snapshot_files = self._row_files()
            self._remove_stray_rows()
            log.info(
                "snapshot %s: %d vectors in %.2f s", name, self.count(), time.perf_counter() - start
            )

    def _write_snapshot(self, root: Path, name: str) -> None:
        tmp = root / f"tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        entries = []
        for number, (category, part) in enumerate(self._parts.items()):
            if not part.count():
                continue
            stem = f"p{number:04d}"
            part.save(tmp, stem)
            params = part.params if isinstance(part, HnswPartition) else self.settings.hnsw
            entries.append(
                {
                    "category": category,
                    "kind": part.kind,
                    "stem": stem,
                    "count": part.count(),
                    "hnsw": asdict(params),
                }
            )
        assert self._wal is not None
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "lsn": self._wal.last_lsn,
            "created": time.time(),
            "partitions": entries,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        replace_folder(tmp, root / name)

    def close(self) -> None:
        """Release the log and the folder lock (no snapshot: writes are already durable)."""
        with self._writer, self._lock.write():
            self._closed = True
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if self._lock_file is not None:
                self._lock_file.close()  # closing drops the flock
                self._lock_file = None
