"""Triplet files: JSONL lines in the trainer's format, written atomically, read back, keyed.

One line per triplet (image paths relative to the data set root; extra keys are kept):
    {"query": {"image": PATH, "bbox": {left, top, width, height}?}, "positive": {"image": PATH},
     "negative": {"image": PATH}, "kind": "catalog" | "wild", "status": "pending", ...}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from visnet.data.street2shop import Box
from visnet.io import JsonLinesError, read_jsonl, write_jsonl_atomic

__all__ = ["TRIPLET_ROLES", "image_ref", "read_triplet_lines", "triplet_key", "write_triplets"]

TRIPLET_ROLES = ("query", "positive", "negative")


def image_ref(root: Path, path: Path, bbox: Box | None = None) -> dict[str, Any]:
    """{"image": path relative to root (POSIX), "bbox"?} for one triplet member."""
    try:  # absolute, not resolved: a symlinked photo keeps its place under the root
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        relative = Path(os.path.abspath(path))
    ref: dict[str, Any] = {"image": relative.as_posix()}
    if bbox is not None:
        ref["bbox"] = bbox.to_json()
    return ref


def triplet_key(line: dict[str, Any]) -> str:
    """A content key: the same images, box and kind give the same key (ranks and ids ignored)."""
    core = {role: line[role] for role in TRIPLET_ROLES}
    core["kind"] = line.get("kind", "catalog")
    text = json.dumps(core, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def write_triplets(lines: Iterable[dict[str, Any]], path: Path | str) -> int:
    """Write triplet lines to `path` atomically (a temp file, then rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl_atomic(path, lines, separators=(",", ":"))


def read_triplet_lines(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line raises ValueError."""
    for lineno, line in read_jsonl(path):
        missing = [r for r in TRIPLET_ROLES if not isinstance(line.get(r), dict)]
        if missing:
            raise JsonLinesError(path, lineno, f"missing triplet members {missing}")
        yield lineno, line
