"""Human review of proposed triplets: a SQLite queue (WAL, one transaction a decision), CSV, views.

    triplets(id, key UNIQUE, line, kind, status pending|approved|rejected, reviewer, decided_at)
    decisions(seq, triplet_id, status, reviewer, decided_at, source review|import)  audit log
    meta(name, value)                                              schema version, data root

A decision is committed (synchronous=FULL) before `decide` returns, so a killed reviewer loses at
most the triplet on screen. Decision times are UTC ISO-8601; on CSV import a later decision wins.
"""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from visnet.io import atomic_open
from visnet.triplets.io import TRIPLET_ROLES, read_triplet_lines, triplet_key, write_triplets

log = logging.getLogger(__name__)

__all__ = [
    "DECISIONS",
    "QUEUE_SUFFIXES",
    "QueuedTriplet",
    "ReviewQueue",
    "describe",
    "is_queue_file",
    "queue_lines",
    "render_triplet",
    "review_session",
]

STATUSES = ("pending", "approved", "rejected")
DECISIONS = ("approved", "rejected")
QUEUE_SUFFIXES = (".sqlite", ".db")
CSV_FIELDS = ("id", "key", "status", "reviewer", "decided_at")
SCHEMA_VERSION = "1"
_REVIEW_KEYS = ("status", "reviewer", "decided_at")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    line TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    reviewer TEXT,
    decided_at TEXT
);
CREATE INDEX IF NOT EXISTS triplets_by_status ON triplets (status, id);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    triplet_id INTEGER NOT NULL REFERENCES triplets (id),
    status TEXT NOT NULL,
    reviewer TEXT,
    decided_at TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def is_queue_file(path: Path | str) -> bool:
    """True for a review-queue path (by suffix: .sqlite or .db)."""
    return Path(path).suffix.lower() in QUEUE_SUFFIXES


def now() -> str:
    """The current UTC time, ISO-8601 with microseconds (sorts as text, parses back)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _parse_time(text: str, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: decided_at must be an ISO-8601 time; got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class QueuedTriplet:
    """One queued triplet: its line (without review keys) and its review state."""

    id: int
    key: str
    line: dict[str, Any]
    status: str
    reviewer: str | None
    decided_at: str | None

    def as_line(self) -> dict[str, Any]:
        """The JSONL line for training, with status, reviewer and decided_at put back."""
        out = {**self.line, "status": self.status, "review_id": self.id}
        if self.reviewer is not None:
            out["reviewer"], out["decided_at"] = self.reviewer, self.decided_at
        return out


class ReviewQueue:
    """A review queue in one SQLite file; safe to kill at any time, resumable, idempotent adds."""

    def __init__(self, path: Path | str, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"review queue {self.path} not found; create it with --add")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if create:
            self.db.executescript(_SCHEMA)
            self._set_meta("schema_version", SCHEMA_VERSION, overwrite=False)
        elif not self._has_table("triplets"):
            raise ValueError(f"{self.path} is not a VisNet review queue (no triplets table)")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _has_table(self, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.db.execute(sql, (name,)).fetchone() is not None

    def _set_meta(self, name: str, value: str, overwrite: bool = True) -> None:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        self.db.execute(f"{verb} INTO meta (name, value) VALUES (?, ?)", (name, value))

    @property
    def root(self) -> Path | None:
        """The data set root the image paths are relative to, if one was recorded."""
        row = self.db.execute("SELECT value FROM meta WHERE name = 'root'").fetchone()
        return Path(row[0]) if row else None

    # ------------------------------------------------------------------------------ adding

    def add(
        self, source: Path | str | Iterable[dict[str, Any]], root: Path | str | None = None
    ) -> dict[str, int]:
        """Add triplet lines (a JSONL file or dicts) in one transaction; known keys are ignored.

        A line's own status/reviewer/decided_at are kept (a re-added export keeps its decisions).
        `root` records the data set folder the image paths are relative to.
        """
        if isinstance(source, str | Path):
            lines: Iterable[dict[str, Any]] = (line for _, line in read_triplet_lines(source))
        else:
            lines = source
        rows = [_row(line) for line in lines]
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO triplets (key, line, kind, status, reviewer, decided_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = db.total_changes - before
            if root is not None:
                self._set_meta("root", str(Path(root).resolve()))
        log.info(
            "review queue %s: %d added, %d already queued", self.path, added, len(rows) - added
        )
        return {"added": added, "already_queued": len(rows) - added}

    # ------------------------------------------------------------------------------ reviewing

    def get(self, triplet_id: int) -> QueuedTriplet:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM triplets WHERE id = ?", (triplet_id,))
        found = row.fetchone()
        if found is None:
            raise KeyError(f"no triplet with id {triplet_id} in {self.path}")
        return _queued(found)

    def next_pending(self, after: int = 0) -> QueuedTriplet | None:
        """The first pending triplet with id > `after`, wrapping round; None when none is left."""
        sql = f"SELECT {_COLUMNS} FROM triplets WHERE status = 'pending' AND id > ? ORDER BY id"
        row = self.db.execute(sql + " LIMIT 1", (after,)).fetchone()
        if row is None and after > 0:
            row = self.db.execute(sql + " LIMIT 1", (0,)).fetchone()
        return _queued(row) if row else None

    def decide(self, triplet_id: int, status: str, reviewer: str) -> QueuedTriplet:
        """Record a decision, committed before returning; a later decision replaces an earlier."""
        if status not in DECISIONS:
            raise ValueError(f"status must be one of {DECISIONS}; got {status!r}")
        at = now()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE triplets SET status = ?, reviewer = ?, decided_at = ? WHERE id = ?",
                (status, reviewer, at, triplet_id),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"no triplet with id {triplet_id} in {self.path}")
            self._log_decision(triplet_id, status, reviewer, at, "review")
        return self.get(triplet_id)

    def _log_decision(self, tid: int, status: str, reviewer: str | None, at: str, src: str) -> None:
        self.db.execute(
            "INSERT INTO decisions (triplet_id, status, reviewer, decided_at, source) "
            "VALUES (?, ?, ?, ?, ?)",
            (tid, status, reviewer, at, src),
        )

    def counts(self) -> dict[str, int]:
        """Triplets per status (every status present, zeros included) and the total."""
        rows = self.db.execute("SELECT status, COUNT(*) FROM triplets GROUP BY status")
        counts = dict.fromkeys(STATUSES, 0) | dict(rows.fetchall())
        return {**counts, "total": sum(counts.values())}

    def items(self, statuses: Iterable[str] = STATUSES) -> Iterator[QueuedTriplet]:
        """Queued triplets with one of `statuses`, in id order."""
        wanted = tuple(statuses)
        marks = ", ".join("?" for _ in wanted)
        sql = f"SELECT {_COLUMNS} FROM triplets WHERE status IN ({marks}) ORDER BY id"
        for row in self.db.execute(sql, wanted).fetchall():
            yield _queued(row)

    # ------------------------------------------------------------------------------ exchange

    def export_csv(self, path: Path | str) -> int:
        """Write the decisions (id, key, status, reviewer, decided_at), atomically. Returns rows."""
        rows = [(t.id, t.key, t.status, t.reviewer, t.decided_at) for t in self.items(DECISIONS)]
        with atomic_open(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_FIELDS)
            writer.writerows(rows)
        return len(rows)

    def import_csv(self, path: Path | str) -> dict[str, int]:
        """Merge decisions from a CSV (matched by key, else id); the later decided_at wins.

        All rows are checked first and merged in one transaction: a bad row changes nothing.
        """
        rows = list(_read_decisions(Path(path)))
        result = {"applied": 0, "kept_newer": 0, "unknown": 0}
        with self._transaction():
            for decision in rows:
                result[self._merge(decision)] += 1
        log.info("imported decisions from %s: %s", path, result)
        return result

    def _merge(self, d: dict[str, Any]) -> str:
        by, value = ("key", d["key"]) if d["key"] else ("id", int(d["id"]))
        sql = f"SELECT id, decided_at FROM triplets WHERE {by} = ?"
        row = self.db.execute(sql, (value,)).fetchone()
        if row is None:
            return "unknown"
        tid, current = row
        if current and _parse_time(current, "queue") >= d["when"]:
            return "kept_newer"
        self.db.execute(
            "UPDATE triplets SET status = ?, reviewer = ?, decided_at = ? WHERE id = ?",
            (d["status"], d["reviewer"], d["decided_at"], tid),
        )
        self._log_decision(tid, d["status"], d["reviewer"], d["decided_at"], "import")
        return "applied"

    def lines(self, include_pending: bool = False) -> list[dict[str, Any]]:
        """Training lines: approved triplets, and pending ones if asked; never rejected ones."""
        statuses = ("approved", "pending") if include_pending else ("approved",)
        return [t.as_line() for t in self.items(statuses)]

    def export_jsonl(self, path: Path | str, include_pending: bool = False) -> int:
        """Write the training lines (see `lines`) as a triplet JSONL file. Returns the count."""
        return write_triplets(self.lines(include_pending), path)


_COLUMNS = "id, key, line, status, reviewer, decided_at"


def _queued(row: tuple) -> QueuedTriplet:
    tid, key, line, status, reviewer, decided_at = row
    return QueuedTriplet(tid, key, json.loads(line), status, reviewer, decided_at)


def _row(line: dict[str, Any]) -> tuple[str, str, str, str, str | None, str | None]:
    status = line.get("status", "pending")
    status = status if status in STATUSES else "pending"
    decided = status != "pending"
    core = {k: v for k, v in line.items() if k not in (*_REVIEW_KEYS, "review_id")}
    text = json.dumps(core, separators=(",", ":"), sort_keys=True)
    reviewer = line.get("reviewer") if decided else None
    at = (line.get("decided_at") or now()) if decided else None
    return triplet_key(line), text, str(line.get("kind", "catalog")), status, reviewer, at


def _read_decisions(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("status", "decided_at") if c not in (reader.fieldnames or [])]
        if missing or not {"id", "key"} & set(reader.fieldnames or []):
            raise ValueError(f"{path}: need columns {CSV_FIELDS}; got {reader.fieldnames}")
        for lineno, raw in enumerate(reader, 2):
            where = f"{path}: line {lineno}"
            if raw["status"] not in DECISIONS:
                raise ValueError(
                    f"{where}: status must be one of {DECISIONS}; got {raw['status']!r}"
                )
            key, tid = (raw.get("key") or "").strip(), (raw.get("id") or "").strip()
            if not key and not tid.isdigit():
                raise ValueError(f"{where}: needs a key or an integer id")
            when = _parse_time(raw["decided_at"], where)
            yield {
                **raw,
                "key": key,
                "id": tid,
                "when": when,
                "reviewer": raw.get("reviewer") or None,
            }


def queue_lines(path: Path | str, include_pending: bool = False) -> list[dict[str, Any]]:
    """The loader behind `read_triplets` for queue files: approved (and pending) triplet lines."""
    with ReviewQueue(path, create=False) as queue:
        return queue.lines(include_pending)


# ------------------------------------------------------------------------------------ the view


def describe(item: QueuedTriplet) -> list[tuple[str, str]]:
    """(label, value) rows for a terminal view of one triplet."""
    line = item.line
    rows = [("triplet", f"#{item.id} ({item.status})"), ("kind", str(line.get("kind")))]
    rows.append(("category", str(line.get("category", "?"))))
    for role in TRIPLET_ROLES:
        ref = line[role]
        extra = [f"product {line[f'{role}_product']}"] if f"{role}_product" in line else []
        if role != "query" and line.get(f"{role}_rank") is not None:
            extra.append(f"fused rank {line[f'{role}_rank']}")
        if role == "negative" and "negative_kind" in line:
            extra.append(f"{line['negative_kind']}, {line.get('negative_category', '?')}")
        if "bbox" in ref:
            extra.append("box " + ",".join(f"{ref['bbox'][k]:g}" for k in ref["bbox"]))
        rows.append((role, ref["image"] + (f"  [{'; '.join(extra)}]" if extra else "")))
    return rows


def render_triplet(
    item: QueuedTriplet, root: Path, out_dir: Path | None = None, height: int = 160
) -> Path:
    """Query (cropped to its box), positive and negative side by side in a PNG; returns its path."""
    from visnet.images import ImageError, crop_with_margin, load_image

    tiles = []
    for role in TRIPLET_ROLES:
        ref = item.line[role]
        try:
            image = load_image(root / ref["image"])
            if "bbox" in ref:
                b = ref["bbox"]
                right, bottom = b["left"] + b["width"], b["top"] + b["height"]
                image = crop_with_margin(image, (b["left"], b["top"], right, bottom))
        except (ImageError, OSError):
            image = Image.new("RGB", (height, height), (200, 200, 200))
        width = max(1, round(image.width * height / max(1, image.height)))
        tiles.append((role, image.resize((width, height), Image.Resampling.BILINEAR)))
    canvas = Image.new(
        "RGB", (sum(t.width for _, t in tiles) + 8 * len(tiles), height + 16), "white"
    )
    draw, x = ImageDraw.Draw(canvas), 0
    for role, tile in tiles:
        canvas.paste(tile, (x, 16))
        draw.text((x + 2, 2), role, fill=(0, 0, 0))
        x += tile.width + 8
    out = (out_dir or Path(tempfile.gettempdir())) / f"visnet-review-{item.id}.png"
    canvas.save(out)
    return out


def review_session(
    queue: ReviewQueue,
    reviewer: str,
    read_key: Callable[[], str],
    show: Callable[[QueuedTriplet], None],
) -> dict[str, int]:
    """Show pending triplets and record keys: a approve, r reject, s skip, q quit.

    `read_key` returns one key ("q" at the end of input); any other key shows the triplet again.
    """
    done = {"approved": 0, "rejected": 0, "skipped": 0}
    after = 0
    while (item := queue.next_pending(after)) is not None:
        show(item)
        key = read_key().strip().lower()[:1]
        if key == "q":
            break
        if key in ("a", "r"):
            status = "approved" if key == "a" else "rejected"
            queue.decide(item.id, status, reviewer)
            done[status] += 1
        elif key == "s":
            done["skipped"] += 1
        else:
            continue  # an unknown key shows the same triplet again
        after = item.id
    return done
