"""Files on disk: written whole or not at all (durably), and JSON-lines files read line by line.

A write goes to a fresh hidden file beside the target, is flushed and fsync'd, renamed onto the
target (``os.replace``: readers see the old file or the new one, never half of one), and then the
folder is fsync'd so the rename survives a crash. On an error the temporary file is removed and
the target is left as it was. The temporary name keeps the target's suffix, so writers that pick
a format by suffix (``savefig``, ``np.save``, ``Image.save``) write the right thing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "JsonLinesError",
    "atomic_open",
    "atomic_path",
    "fsync_dir",
    "fsync_file",
    "is_temp_name",
    "make_folders",
    "read_jsonl",
    "replace_folder",
    "staging_folder",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]


def fsync_dir(path: Path | str) -> None:
    """Make a directory's entries (new, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path | str) -> None:
    """Make a written (and closed) file's contents durable."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def make_folders(path: Path | str) -> Path:
    """``mkdir -p``, durably: the parent of each folder it creates is fsync'd, so a file later
    written (and fsync'd) inside is not lost with a folder entry that never reached the disk."""
    target = folder = Path(path)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_dir(new.parent)
    return target


_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{12}\.tmp(\.[^.]*)?")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary names (``.STEM.<12 hex>.tmpSUFFIX``):
    a file left by a write that was killed before its rename, when no write is in progress."""
    return _TEMP_NAME.fullmatch(name) is not None


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside `path`, renamed onto it on a clean exit, else removed."""
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path for a writer that needs a path (torch.save, np.save, Image.save, sqlite).

    The body must create the file there; on a clean exit it is fsync'd and moved onto `path`.
    """
    with _replacing(Path(path)) as tmp:
        yield tmp
        fsync_file(tmp)


@contextmanager
def atomic_open(
    path: Path | str, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """A file opened for writing ("w" or "wb"); its contents replace `path` on a clean exit."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb'; got {mode!r}")
    text_encoding = encoding if mode == "w" else None
    with (
        _replacing(Path(path)) as tmp,
        open(tmp, mode, encoding=text_encoding, newline=newline) as f,
    ):
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Replace `path` with `data`, durably and atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Replace `path` with `text`, durably and atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(
    path: Path | str, data: Any, *, indent: int | None = 2, default: Any = None
) -> Path:
    """Replace `path` with `data` as JSON and a newline (`indent`, `default`: as json.dumps)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=default) + "\n")


def write_jsonl_atomic(path: Path | str, rows: Iterable[Any], **dumps: Any) -> int:
    """Replace `path` with one JSON value a line (`dumps`: json.dumps options). Returns the count.

    `rows` may be a generator that raises: the error leaves `path` as it was.
    """
    count = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, **dumps) + "\n")
            count += 1
    return count


def staging_folder(out: Path) -> Path:
    """``OUT.partial``, emptied: where a job builds the folder `replace_folder` moves to `out`."""
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_folder(staging: Path, out: Path) -> None:
    """Move the complete folder `staging` to `out`, removing what was there; fsync the parent."""
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    fsync_dir(out.parent)


class JsonLinesError(ValueError):
    """A JSON-lines file holds a bad line. The message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int, problem: str) -> None:
        self.path, self.line, self.problem = Path(path), line, problem
        super().__init__(f"{path}: line {line}: {problem}")


def read_jsonl(
    path: Path | str, *, encoding: str = "utf-8"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file, numbered from 1.

    A line that is not JSON, or not a JSON object, raises `JsonLinesError`. Pass
    ``encoding="utf-8-sig"`` to accept a leading byte-order mark.
    """
    path = Path(path)
    with path.open(encoding=encoding) as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                problem = f"bad JSON: {exc.msg} (column {exc.colno})"
                raise JsonLinesError(path, number, problem) from exc
            if not isinstance(value, dict):
                problem = f"expected a JSON object, got {type(value).__name__}"
                raise JsonLinesError(path, number, problem)
            yield number, value
