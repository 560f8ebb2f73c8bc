"""On-disk embedding cache keyed by embedder, data set and crop mode; atomic .npy + ids .json.

    CACHE/<key>.npy     float32 (n, dim) vectors, row i belongs to ids[i]
    CACHE/<key>.json    {"ids": [...], "skipped": [{"id", "reason"}], "describe": {...}}

The .json is written last and is the commit marker: an entry without it is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visnet.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

__all__ = [
    "CachedEmbeddings",
    "EmbeddingCache",
    "cache_key",
    "data_fingerprint",
    "default_cache_dir",
]

FORMAT_VERSION = 1


@dataclass
class CachedEmbeddings:
    """Vectors for the items that could be embedded, and why the others were skipped."""

    ids: list[int]
    vectors: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    source: str = "computed"  # or "cache" when read back from disk


def default_cache_dir(data_root: Path | str) -> Path:
    return Path(data_root) / ".cache" / "embeddings"


def data_fingerprint(root: Path | str) -> str:
    """Hash of a set's metadata files and its photos folder mtime (files added or removed)."""
    root = Path(root)
    digest = hashlib.sha1(str(root.resolve()).encode())
    meta = root / "meta" / "json"
    files = sorted(meta.glob("*.json")) if meta.is_dir() else []
    for path in [*files, root / "catalog.jsonl"]:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    photos = root / "photos"
    if photos.is_dir():
        digest.update(str(photos.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A short stable key for a set of JSON-able parts."""
    text = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


class EmbeddingCache:
    """Get and put `CachedEmbeddings` by key under `root`; `root=None` disables caching."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def load(self, key: str) -> CachedEmbeddings | None:
        if self.root is None:
            return None
        index, vectors = self.root / f"{key}.json", self.root / f"{key}.npy"
        if not index.is_file() or not vectors.is_file():
            return None
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
            array = np.load(vectors, allow_pickle=False)
            entry = CachedEmbeddings(
                ids=[int(i) for i in meta["ids"]],
                vectors=array.astype(np.float32, copy=False),
                skipped=[(int(s["id"]), str(s["reason"])) for s in meta["skipped"]],
                source="cache",
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cache entry %s: %s", index, exc)
            return None
        if len(entry.ids) != len(entry.vectors):
            log.warning(
                "ignoring cache entry %s: %d ids, %d vectors", index, len(entry.ids), len(array)
            )
            return None
        log.debug("cache hit %s", key)
        return entry

    def save(self, key: str, entry: CachedEmbeddings, describe: dict[str, Any]) -> None:
        """Store `entry`; a cache that cannot be written (read-only data) only logs a warning."""
        if self.root is None:
            return
        try:
            _write_entry(self.root, key, entry, describe)
        except OSError as exc:
            log.warning("could not write the embedding cache under %s: %s", self.root, exc)


def _write_entry(root: Path, key: str, entry: CachedEmbeddings, describe: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(entry.vectors, dtype=np.float32)
    with atomic_path(root / f"{key}.npy") as tmp:
        np.save(tmp, vectors, allow_pickle=False)
    meta = {
        "ids": entry.ids,
        "skipped": [{"id": i, "reason": r} for i, r in entry.skipped],
        "describe": describe,
    }
    # written last: the .json is the commit marker
    write_json_atomic(root / f"{key}.json", meta, indent=None, default=str)
