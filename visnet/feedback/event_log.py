"""The shopper event log in one SQLite file: checked batches written, lists and clicks read back.

Joining, decided here once (`EventLog.shown_lists`, read by the report and the triplets): the
first impression of a (session, query id) counts, later ones are duplicates (a page resent) and
ignored; a click counts when its session's first impression of its query id showed that product
at that position. A click that matches nothing (its impression never arrived, or names another
product or position) is stored as sent, and counted apart as unmatched, never as a click-through:
the impression may still be in flight when the click is logged, so the join is made when read.

SQLite file (WAL, ``synchronous=FULL``: a batch is on disk before `record` returns; a write
waits at most ``timeout`` s for another writer's lock, and past ``max_bytes`` on disk, pages and
write-ahead log, `record` refuses every batch with `EventLogFullError`)::

    events(id, received, session, type, query_id, query_kind, model, index_id, anchor,
           query_image, product, position)      one row an event
    shown(event_id, position, product)           an impression's results
    meta(name, value)                            schema version
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

from visnet.feedback.event_schema import (
    EVENT_TYPES,
    BatchResult,
    Cart,
    Click,
    Impression,
    KnownProducts,
    Purchase,
    parse_batch,
)

__all__ = ["EVENTS_FILE", "EventLog", "EventLogFullError", "ShownList"]

EVENTS_FILE = "events.sqlite"  # the log's name in the index folder: INDEX/events.sqlite
SCHEMA_VERSION = "1"


class EventLogFullError(RuntimeError):
    """The log has reached its size cap (`EventLog` ``max_bytes``): no batch is taken."""


@dataclass(frozen=True)
class ShownList:
    """A result list as first shown in its session, with the positions a matching click hit."""

    session: str
    query_id: str
    query_kind: str
    model: str
    index: str | None
    anchor: str | None
    query_image: str | None
    shown: tuple[tuple[int, str], ...]  # (position, product), by position
    clicked: frozenset[int]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received TEXT NOT NULL,
    session TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('impression', 'click', 'cart', 'purchase')),
    query_id TEXT, query_kind TEXT, model TEXT, index_id TEXT, anchor TEXT, query_image TEXT,
    product TEXT, position INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_query ON events (session, query_id, type);
CREATE TABLE IF NOT EXISTS shown (
    event_id INTEGER NOT NULL REFERENCES events (id),
    position INTEGER NOT NULL,
    product TEXT NOT NULL,
    PRIMARY KEY (event_id, position)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# the first impression of each (session, query id): later ones are a resent page
_FIRSTS = (
    "firsts AS (SELECT MIN(id) AS id FROM events WHERE type = 'impression' "
    "GROUP BY session, query_id)"
)
_MATCH = (
    "SELECT 1 FROM events c WHERE c.type = 'click' AND c.session = e.session "
    "AND c.query_id = e.query_id AND c.position = s.position AND c.product = s.product"
)
_SHOWN_SQL = f"""
WITH {_FIRSTS}
SELECT e.id, e.session, e.query_id, e.query_kind, e.model, e.index_id, e.anchor, e.query_image,
       s.position, s.product, EXISTS ({_MATCH})
FROM firsts f JOIN events e ON e.id = f.id JOIN shown s ON s.event_id = e.id
ORDER BY e.id, s.position
"""
_UNMATCHED_SQL = f"""
WITH {_FIRSTS}
SELECT COUNT(*) FROM events c WHERE c.type = 'click' AND NOT EXISTS (
    SELECT 1 FROM firsts f JOIN events e ON e.id = f.id JOIN shown s ON s.event_id = e.id
    WHERE e.session = c.session AND e.query_id = c.query_id
      AND s.position = c.position AND s.product = c.product)
"""
# carts and purchases whose list (same session and query id) showed the product
_ACTIONS_SQL = f"""
WITH {_FIRSTS}
SELECT e.model, e.query_kind, a.type, COUNT(*)
FROM events a JOIN events e ON e.session = a.session AND e.query_id = a.query_id
JOIN firsts f ON f.id = e.id JOIN shown s ON s.event_id = e.id AND s.product = a.product
WHERE a.type IN ('cart', 'purchase')
GROUP BY e.model, e.query_kind, a.type ORDER BY 1, 2, 3
"""


class EventLog:
    """The event log in one SQLite file; safe across threads (one writer at a time)."""

    def __init__(
        self,
        path: Path | str,
        create: bool = True,
        timeout: float = 30.0,
        max_bytes: int | None = None,
    ) -> None:
        """`timeout`: seconds a write waits for another writer's lock (another process sharing
        the file) before `sqlite3.OperationalError` ("database is locked"); `max_bytes`: past
        this size (`size_bytes`) `record` refuses batches (`EventLogFullError`)."""
        self.path, self.max_bytes = Path(path), max_bytes
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"event log {self.path} not found")
        # "IMMEDIATE": a write opens its transaction with the write lock, and `with self.db`
        # commits it (or rolls it back on an error) as one batch
        self.db = sqlite3.connect(
            self.path, isolation_level="IMMEDIATE", timeout=timeout, check_same_thread=False
        )
        self._lock = threading.RLock()
        try:
            self._prepare(create)
        except BaseException:  # a file that is no SQLite database, no event log, a full disk
            self.db.close()
            raise

    def _prepare(self, create: bool) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if create:
            self.db.executescript(_SCHEMA)
            with self.db:
                self.db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
        elif not self._has_events_table():
            raise ValueError(f"{self.path} is not a VisNet event log (no events table)")
        self._page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])

    def _has_events_table(self) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        return self.db.execute(sql).fetchone() is not None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ writing

    def record(self, session: str, events: Sequence[Impression | Click | Cart | Purchase]) -> int:
        """Log checked events of one session in one transaction; returns how many."""
        received = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            self._check_room()
            self._insert(session, received, events)
        return len(events)

    def size_bytes(self) -> int:
        """The log's size on disk: its pages (free ones too) and its write-ahead log; a header
        read and a stat, cheap enough for every batch."""
        with self._lock:
            pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            wal = 0
        return pages * self._page_size + wal

    def _check_room(self) -> None:
        if self.max_bytes is None:
            return
        size = self.size_bytes()
        if size >= self.max_bytes:
            raise EventLogFullError(
                f"the event log {self.path} holds {size} bytes, its cap is {self.max_bytes}: "
                "archive it (and start a new one) or raise the cap (events_max_bytes)"
            )

    def _insert(
        self, session: str, received: str, events: Sequence[Impression | Click | Cart | Purchase]
    ) -> None:
        with self.db as db:
            for event in events:
                cursor = db.execute(
                    "INSERT INTO events (received, session, type, query_id, query_kind, model, "
                    "index_id, anchor, query_image, product, position) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (received, session, *_columns(event)),
                )
                if isinstance(event, Impression):
                    db.executemany(
                        "INSERT INTO shown VALUES (?, ?, ?)",
                        [(cursor.lastrowid, s.position, s.product) for s in event.shown],
                    )

    def record_batch(self, body: Any, known_products: KnownProducts | None = None) -> BatchResult:
        """`parse_batch`, then log the good events: the service's whole ``POST /v1/events``."""
        parsed = parse_batch(body, known_products)
        accepted = self.record(parsed.session, parsed.events) if parsed.events else 0
        return BatchResult(accepted=accepted, rejected=parsed.problems)

    # ------------------------------------------------------------------------------ reading

    def shown_lists(self) -> Iterator[ShownList]:
        """Every result list (the first impression of its session and query id), in log order,
        with the positions a matching click hit (module docstring)."""
        with self._lock:
            rows = self.db.execute(_SHOWN_SQL).fetchall()
        for _, group in groupby(rows, key=lambda row: row[0]):
            items = list(group)
            _, session, query_id, kind, model, index, anchor, image = items[0][:8]
            yield ShownList(
                session,
                query_id,
                kind,
                model,
                index,
                anchor,
                image,
                shown=tuple((row[8], row[9]) for row in items),
                clicked=frozenset(row[8] for row in items if row[10]),
            )

    def counts(self) -> dict[str, int]:
        """Events by type (every type, zeros included), duplicate impressions and unmatched
        clicks."""
        with self._lock:
            rows = dict(self.db.execute("SELECT type, COUNT(*) FROM events GROUP BY type"))
            lists = self.db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE type = 'impression' "
                "GROUP BY session, query_id)"
            ).fetchone()[0]
            unmatched = self.db.execute(_UNMATCHED_SQL).fetchone()[0]
        counts = {kind: int(rows.get(kind, 0)) for kind in EVENT_TYPES}
        counts["duplicate_impressions"] = counts["impression"] - int(lists)
        counts["unmatched_clicks"] = int(unmatched)
        return counts

    def actions(self) -> list[tuple[str, str, str, int]]:
        """(model, query kind, cart | purchase, count) for carts and purchases of a product
        their list showed (same session and query id)."""
        with self._lock:
            rows = self.db.execute(_ACTIONS_SQL).fetchall()
        return [(str(m), str(k), str(a), int(n)) for m, k, a, n in rows]


def _columns(event: Impression | Click | Cart | Purchase) -> tuple[Any, ...]:
    """(type, query_id, query_kind, model, index_id, anchor, query_image, product, position)."""
    if isinstance(event, Impression):
        return (
            "impression",
            event.query_id,
            event.query_kind,
            event.model,
            event.index,
            event.anchor,
            event.query_image,
            None,
            None,
        )
    position = event.position if isinstance(event, Click) else None
    return (event.type, event.query_id, None, None, None, None, None, event.product, position)
