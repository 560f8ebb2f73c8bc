"""Shopper events (impressions, clicks, carts, purchases): the typed schema and the batch check.

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
by the report and proposed as triplets for review, never trained on directly. They are kept by
`visnet.feedback.event_log`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from visnet.feedback.queries import CROP_ID_PATTERN
from visnet.index.products import PRODUCT_ID_PATTERN

__all__ = [
    "ID_PATTERN",
    "MAX_EVENTS",
    "MAX_POSITION",
    "BatchError",
    "BatchResult",
    "Cart",
    "Click",
    "Event",
    "EventBatch",
    "EventProblem",
    "Impression",
    "ParsedBatch",
    "Purchase",
    "Shown",
    "fingerprint_token",
    "new_query_id",
    "parse_batch",
]

MAX_EVENTS = 100  # events one batch may carry
MAX_POSITION = 100  # the last position a list shows (the service answers at most 100 results)
ID_PATTERN = r"^[A-Za-z0-9_\-]{8,64}$"  # session and query ids: opaque tokens, nothing readable
FINGERPRINT_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
QUERY_KINDS = ("search", "similar")

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
