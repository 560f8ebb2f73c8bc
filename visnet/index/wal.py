"""Write-ahead log: fsync'd, length-prefixed, CRC-checked records of upserts and deletes."""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visnet.io import fsync_dir

__all__ = ["WalRecord", "WriteAheadLog"]

log = logging.getLogger(__name__)

UPSERT, DELETE = 1, 2
_HEAD = struct.Struct("<II")
_PREFIX = struct.Struct("<QB")
_COUNTS = struct.Struct("<II")
_MAX_RECORD = 1 << 31


@dataclass(frozen=True)
class WalRecord:
    """One logged write: an upsert (with vectors and categories) or a delete."""

    lsn: int
    op: int
    ids: np.ndarray
    vectors: np.ndarray | None = None
    categories: list[str] | None = None


def _encode(record: WalRecord) -> bytes:
    ids = np.ascontiguousarray(record.ids, dtype="<i8")
    if record.op == DELETE:
        body = _COUNTS.pack(len(ids), 0) + ids.tobytes()
    else:
        assert record.vectors is not None and record.categories is not None
        vectors = np.ascontiguousarray(record.vectors, dtype="<f4")
        cats = json.dumps(record.categories, ensure_ascii=False).encode("utf-8")
        body = _COUNTS.pack(len(ids), vectors.shape[1]) + ids.tobytes() + vectors.tobytes() + cats
    payload = _PREFIX.pack(record.lsn, record.op) + body
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> WalRecord:
    lsn, op = _PREFIX.unpack_from(payload, 0)
    n, dim = _COUNTS.unpack_from(payload, _PREFIX.size)
    at = _PREFIX.size + _COUNTS.size
    ids = np.frombuffer(payload, dtype="<i8", count=n, offset=at).astype(np.int64)
    if op == DELETE:
        return WalRecord(lsn, op, ids)
    at += 8 * n
    vectors = np.frombuffer(payload, dtype="<f4", count=n * dim, offset=at).reshape(n, dim)
    categories = json.loads(payload[at + 4 * n * dim :].decode("utf-8"))
    return WalRecord(lsn, op, ids, vectors.astype(np.float32), categories)


def _scan(data: bytes) -> tuple[list[WalRecord], int]:
    """Decode records until the first bad one; return them and the end of the good prefix."""
    records: list[WalRecord] = []
    at = 0
    while at + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + length
        if length > _MAX_RECORD or end > len(data):
            break
        payload = data[at + _HEAD.size : end]
        if zlib.crc32(payload) != crc:
            break
        records.append(_decode(payload))
        at = end
    return records, at


class WriteAheadLog:
    """An append-only log file; ``append`` returns only after the record is on disk.

    Record layout (little-endian): ``u32 length | u32 crc32(payload) | payload`` where payload is
    ``u64 lsn | u8 op | body``. An upsert body is ``u32 n | u32 dim | n*i64 ids | n*dim*f32 vectors
    | utf-8 JSON list of categories``; a delete body is ``u32 n | n*i64 ids``. Reading stops at the
    first short, oversized or CRC-failing record: a torn tail from a crash is ignored and cut off,
    so records appended afterwards stay readable.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open for the log's lifetime
        if created:
            fsync_dir(self.path.parent)
        self.records = self._read_all()
        self.last_lsn = self.records[-1].lsn if self.records else 0

    def _read_all(self) -> list[WalRecord]:
        self._file.seek(0)
        data = self._file.read()
        records, good_end = _scan(data)
        if good_end < len(data):
            log.warning(
                "write-ahead log %s: ignoring a torn or corrupt tail of %d bytes after %d records",
                self.path,
                len(data) - good_end,
                len(records),
            )
            self._file.truncate(good_end)
            os.fsync(self._file.fileno())
        return records

    def replay(self, after_lsn: int) -> Iterator[WalRecord]:
        """The records read at open whose lsn is greater than ``after_lsn``, in order; once."""
        records, self.records = self.records, []
        for record in records:
            if record.lsn > after_lsn:
                yield record

    def append_upsert(self, ids: np.ndarray, vectors: np.ndarray, categories: list[str]) -> int:
        """Log an upsert durably; return its lsn."""
        return self._append(WalRecord(self.last_lsn + 1, UPSERT, ids, vectors, categories))

    def append_delete(self, ids: np.ndarray) -> int:
        """Log a delete durably; return its lsn."""
        return self._append(WalRecord(self.last_lsn + 1, DELETE, ids))

    def _append(self, record: WalRecord) -> int:
        self._file.seek(0, os.SEEK_END)
        self._file.write(_encode(record))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.last_lsn = record.lsn
        return record.lsn

    def size(self) -> int:
        """Bytes in the log file."""
        return self._file.seek(0, os.SEEK_END)

    def truncate(self) -> None:
        """Empty the log (after a snapshot holds everything in it); lsns keep counting up."""
        self._file.truncate(0)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records = []

    def set_last_lsn(self, lsn: int) -> None:
        """Continue numbering after ``lsn`` (the snapshot's) when the log itself is empty."""
        self.last_lsn = max(self.last_lsn, lsn)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
