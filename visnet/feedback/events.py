"""Shopper events (impressions, clicks, carts, purchases): typed, validated, and logged in SQLite.

The page sends a batch: ``{"session": ID, "events": [...]}``. Each event is one of

    {"type": "impression", "query_id": ID, "query_kind": "search" | "similar", "model": FP,
     "index": FP?, "anchor": PRODUCT (similar only), "query_image": CROP (search only, optional),
     "shown": [{"product": PRODUCT, "position": 1..100}, ...]}
    {"type": "click", "query_id": ID, "product": PRODUCT, "position": 1..100}
    {"type": "cart" | "purchase", "product": PRODUCT, "query_id": ID?}

Ids are opaque tokens (`ID_PATTERN`); the session id is the only thing about a shopper that is
kept: no address, no user agent, no free text (unknown fields are refused). ``query_id`` joins a
list to its clicks: the service mints one per result list it answers and the page echoes it.
``query_image`` names the search's stored crop (`visnet.feedback.queries`).

A batch is checked event by event (`parse_batch`): a bad event is reported by its index and
code and the good ones are still logged; only a batch that is not a batch (no session, no list,
more than `MAX_EVENTS`) is refused whole (`BatchError`). Events are untrusted: they are counted
by the report and proposed as triplets for review, never trained on directly.

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

import hashlib
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from visnet.feedback.queries import CROP_ID_PATTERN
from visnet.index.products import PRODUCT_ID_PATTERN

__all__ = [
    "EVENTS_FILE",
    "ID_PATTERN",
    "MAX_EVENTS",
    "MAX_POSITION",
    "BatchError",
    "BatchResult",
    "Cart",
    "Click",
    "Event",
    "EventBatch",
    "EventLog",
    "EventLogFullError",
    "EventProblem",
    "Impression",
    "ParsedBatch",
    "Purchase",
    "Shown",
    "ShownList",
    "fingerprint_token",
    "new_query_id",
    "parse_batch",
]

EVENTS_FILE = "events.sqlite"  # the log's name in the index folder: INDEX/events.sqlite
MAX_EVENTS = 100  # events one batch may carry
MAX_POSITION = 100  # the last position a list shows (the service answers at most 100 results)
ID_PATTERN = r"^[A-Za-z0-9_\-]{8,64}$"  # session and query ids: opaque tokens, nothing readable
FINGERPRINT_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
QUERY_KINDS = ("search", "similar")
SCHEMA_VERSION = "1"

TokenId = Annotated[str, Field(pattern=ID_PATTERN, description="an opaque token, 8-64 chars")]
ProductId = Annotated[str, Field(pattern=PRODUCT_ID_PATTERN, description="a catalog product id")]
Position = Annotated[int, Field(ge=1, le=MAX_POSITION, description="1 is the first result")]
Fingerprint = Annotated[str, Field(pattern=FINGERPRINT_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shown(_Strict):
    product: ProductId
    position: Position


class Impression(_Strict):
    """A result list as the page showed it, and what ranked it."""

    type: Literal["impression"]
    query_id: TokenId
    query_kind: Literal["search", "similar"]
    model: Fingerprint = Field(description="the fingerprint of the model that ranked the list")
    index: Fingerprint | None = Field(None, description="the index (or replica) that served it")
    anchor: ProductId | None = Field(None, description="similar: the product whose look-alikes")
    query_image: str | None = Field(
        None, pattern=CROP_ID_PATTERN, description="search: the stored crop the service returned"
    )
    shown: list[Shown] = Field(min_length=1, max_length=MAX_POSITION)

    @model_validator(mode="after")
    def _consistent(self) -> Impression:
        positions = [s.position for s in self.shown]
        if len(set(positions)) < len(positions):
            raise ValueError("shown: each position may appear once")
        if len({s.product for s in self.shown}) < len(self.shown):
            raise ValueError("shown: each product may appear once")
        if (self.query_kind == "similar") != (self.anchor is not None):
            raise ValueError("anchor: required for query_kind 'similar', refused for 'search'")
        if self.query_kind == "similar" and self.query_image is not None:
            raise ValueError("query_image: only a search has one")
        return self

    def products(self) -> set[str]:
        return {s.product for s in self.shown} | ({self.anchor} if self.anchor else set())


class Click(_Strict):
    """A shopper opened one result of a list."""

    type: Literal["click"]
    query_id: TokenId
    product: ProductId
    position: Position

    def products(self) -> set[str]:
        return {self.product}


class Cart(_Strict):
    """A product added to the cart (from a list, when `query_id` is given)."""

    type: Literal["cart"]
    product: ProductId
    query_id: TokenId | None = None

    def products(self) -> set[str]:
        return {self.product}


class Purchase(_Strict):
    """A product bought (from a list, when `query_id` is given)."""

    type: Literal["purchase"]
    product: ProductId
    query_id: TokenId | None = None

    def products(self) -> set[str]:
        return {self.product}


Event = Annotated[Impression | Click | Cart | Purchase, Field(discriminator="type")]
EVENT_TYPES = ("impression", "click", "cart", "purchase")
_EVENT: TypeAdapter[Impression | Click | Cart | Purchase] = TypeAdapter(Event)
_TOKEN: TypeAdapter[str] = TypeAdapter(TokenId)


class EventBatch(_Strict):
    """The body of ``POST /v1/events`` as OpenAPI shows it (`parse_batch` checks it event by
    event, so one bad event does not lose the others)."""

    session: TokenId
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


# ----------------------------------------------------------------------------------- checking


class BatchError(ValueError):
    """The whole batch is refused; `code`: ``invalid_batch`` or ``too_many_events``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EventLogFullError(RuntimeError):
    """The log has reached its size cap (`EventLog` ``max_bytes``): no batch is taken."""


class EventProblem(_Strict):
    """One refused event: its place in the batch, a stable code and what is wrong."""

    index: int
    code: Literal["unknown_event_type", "position_out_of_range", "unknown_product", "invalid_event"]
    message: str


@dataclass(frozen=True)
class ParsedBatch:
    session: str
    events: list[Impression | Click | Cart | Purchase]
    problems: list[EventProblem]


class BatchResult(_Strict):
    """What `EventLog.record_batch` did: events logged, and the events refused (the service's
    answer to a batch)."""

    accepted: int = Field(description="events logged")
    rejected: list[EventProblem] = Field(description="events refused, by their index")


KnownProducts = Callable[[set[str]], set[str]]  # of these ids, those the catalog holds


def new_query_id() -> str:
    """A fresh query id for one result list (the service returns it with the list)."""
    return uuid.uuid4().hex


def fingerprint_token(fingerprint: str, name: str = "") -> str:
    """A model's or an index's fingerprint as an impression names it (`FINGERPRINT_PATTERN`):
    itself when it fits (a VisNet model's weights hash), else ``NAME:HASH`` (a baseline's
    fingerprint spells out its settings), the same for the same fingerprint everywhere."""
    if re.fullmatch(FINGERPRINT_PATTERN, fingerprint):
        return fingerprint
    label = re.sub(r"[^A-Za-z0-9_.\-]+", "-", name).strip("-.")[:48] or "model"
    return f"{label}:{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}"


def parse_batch(
    body: Any, known_products: KnownProducts | None = None, max_events: int = MAX_EVENTS
) -> ParsedBatch:
    """Check a batch event by event: the good events, and a problem for each bad one.

    `known_products` (given the ids a batch names, returns those the catalog holds) refuses
    events that name another product. Raises `BatchError` when the batch itself is malformed.
    """
    if not isinstance(body, dict) or set(body) - {"session", "events"}:
        raise BatchError("invalid_batch", 'a batch is {"session": ID, "events": [...]}')
    session, raw = body.get("session"), body.get("events")
    try:
        _TOKEN.validate_python(session)
    except ValidationError:
        raise BatchError("invalid_batch", f"session must match {ID_PATTERN}") from None
    if not isinstance(raw, list) or not raw:
        raise BatchError("invalid_batch", "events must be a non-empty list")
    if len(raw) > max_events:
        raise BatchError(
            "too_many_events", f"a batch holds at most {max_events} events; got {len(raw)}"
        )
    events, problems = [], []
    for index, item in enumerate(raw):
        try:
            events.append((index, _EVENT.validate_python(item)))
        except ValidationError as exc:
            problems.append(_problem(index, exc))
    if known_products is not None:
        events, problems = _known_only(events, problems, known_products)
    problems.sort(key=lambda p: p.index)
    return ParsedBatch(str(session), [event for _, event in events], problems)


_OUT_OF_RANGE = ("greater_than_equal", "less_than_equal")


def _problem(index: int, exc: ValidationError) -> EventProblem:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "event"
    if first["type"] == "union_tag_invalid":
        return EventProblem(
            index=index,
            code="unknown_event_type",
            message=f"event {index}: type must be one of {EVENT_TYPES}",
        )
    if first["loc"][-1:] == ("position",) and first["type"] in _OUT_OF_RANGE:
        return EventProblem(
            index=index,
            code="position_out_of_range",
            message=f"event {index}: {where}: positions run from 1 to {MAX_POSITION}",
        )
    message = f"event {index}: {where}: {first['msg']}"
    return EventProblem(index=index, code="invalid_event", message=message)


def _known_only(
    events: list[tuple[int, Any]], problems: list[EventProblem], known: KnownProducts
) -> tuple[list[tuple[int, Any]], list[EventProblem]]:
    named = set().union(*(event.products() for _, event in events))
    held = known(named) if named else set()
    kept = []
    for index, event in events:
        unknown = sorted(event.products() - held)
        if unknown:
            message = f"event {index}: unknown product ids {unknown[:5]}: not in the catalog"
            problems.append(EventProblem(index=index, code="unknown_product", message=message))
        else:
            kept.append((index, event))
    return kept, problems


# ---------------------------------------------------------------------------------------- log


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
