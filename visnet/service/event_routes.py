"""Shopper events: ``POST /v1/events`` logs the page's impressions, clicks, carts and purchases.

The body is read here, not by FastAPI, which would refuse a whole batch for one bad event: the
batch is checked event by event (`visnet.feedback.event_schema.parse_batch`), the good events logged
in the index folder's ``events.sqlite`` before the answer, the others named. /openapi.json still
shows the body's true schema (`EventBatch`: `install_event_schemas` adds its models).

The one rule for the answer, from `BatchResult`: 200 `EventsOut` when at least one event was
logged (`rejected` names the others, which need not be sent again); 422 `EventsRefusedOut` when
none was (`no_events_accepted`, each event named; `invalid_batch`, no session or no list of
events). 413 for an oversized batch: over `MAX_EVENTS` events (`too_many_events`) or over the
``max_event_bytes`` setting (`upload_too_large`, before the body is read); 400 `bad_request` for
a body that is not JSON; 429 `rate_limited` with Retry-After for a client address past its
share (``events_rate``, ``events_burst``; an IPv6 address counts by its /64), and 503 `events_busy`
with Retry-After past all addresses' share together (``events_total_rate``,
``events_total_burst``), both checked before the body is read; 503 `events_busy` too when
`WRITERS` batches are being written and `WAITING` more wait; 503 `events_unavailable` with
Retry-After when the log cannot take the batch (locked past ``events_lock_timeout``, or its disk
full); 507 `events_full` when the log has reached ``events_max_bytes`` (no Retry-After: it stays
full until an operator archives it).

Batches are written on threads of their own, at most `WRITERS` at once (`EventGate.writers`), so
a log that waits for its lock never holds the threads searches run on.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import Response

from visnet.feedback.event_log import EventLogFullError
from visnet.feedback.event_schema import MAX_EVENTS, BatchError, EventBatch, EventProblem
from visnet.feedback.limits import RateLimiter, address_key
from visnet.service.errors import ApiError
from visnet.service.routes import EngineDep
from visnet.service.schemas import ErrorOut, EventsOut, EventsRefusedOut
from visnet.service.settings import ServiceSettings

__all__ = ["EVENTS_PATH", "EventGate", "install_event_schemas", "router"]

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")

EVENTS_PATH = "/v1/events"
WRITERS = 2  # batches written at once, each on a thread of its own
WAITING = 32  # batches waiting for a writer; one more is answered 503 `events_busy`
RETRY_BUSY_S, RETRY_UNAVAILABLE_S = 1, 5
SCHEMA_REF = "#/components/schemas/"
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not JSON (`bad_request`)"},
    413: {
        "model": ErrorOut,
        "description": f"more than {MAX_EVENTS} events (`too_many_events`) or a body over the "
        "`max_event_bytes` setting (`upload_too_large`): send smaller batches",
    },
    422: {
        "model": EventsRefusedOut,
        "description": "nothing was logged: every event was refused (`no_events_accepted`, "
        "each named in `rejected`), or the body is no batch (`invalid_batch`)",
    },
    429: {
        "model": ErrorOut,
        "description": "this client address sent more batches than its share (`rate_limited`); "
        "send again after Retry-After seconds",
        "headers": {
            "Retry-After": {
                "description": "seconds until a batch is taken again",
                "schema": {"type": "integer"},
            }
        },
    },
    503: {
        "model": ErrorOut,
        "description": "the index is not loaded yet (`not_ready`); every client together sent "
        "more batches than the service takes, or too many wait to be written (`events_busy`); "
        "or the event log could not be opened or could not take the batch (`events_unavailable`)"
        ": send it again after Retry-After seconds",
        "headers": {
            "Retry-After": {
                "description": "seconds until the batch may be taken (absent when the log could "
                "not be opened)",
                "schema": {"type": "integer"},
            }
        },
    },
    507: {
        "model": ErrorOut,
        "description": "the event log has reached its size cap (the `events_max_bytes` setting; "
        "`events_full`): nothing is logged until an operator archives it, so do not resend",
    },
}
BODY = {
    "requestBody": {
        "required": True,
        "description": f"a session id and 1..{MAX_EVENTS} events, checked one by one",
        "content": {"application/json": {"schema": {"$ref": f"{SCHEMA_REF}EventBatch"}}},
    }
}


class EventGate:
    """What admits event batches (`app.state.event_gate`): each client address's token bucket,
    one for all addresses together, and the writers' own thread limit."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.per_address = RateLimiter(settings.events_rate, settings.events_burst)
        self.total = RateLimiter(settings.events_total_rate, settings.events_total_burst, 1)
        self.writers = anyio.CapacityLimiter(WRITERS)
        self.full_reported = False  # the log's size cap was logged

    def admit(self, client: str) -> None:
        """429 past the address's share, 503 past everyone's (an address refused for its own
        share takes nothing from everyone's)."""
        wait = self.per_address.acquire(client)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"too many event batches from this address; send again in {_seconds(wait)} s",
                {"Retry-After": str(_seconds(wait))},
            )
        wait = self.total.acquire("all")
        if wait > 0:
            message = (
                f"the service takes no more event batches now; send again in {_seconds(wait)} s"
            )
            raise ApiError(503, "events_busy", message, {"Retry-After": str(_seconds(wait))})

    async def write(self, record: Callable[[Any], T], body: Any) -> T:
        """`record(body)` on a writer thread; 503 when `WAITING` batches already wait for one."""
        if self.writers.available_tokens < 1 and self.writers.statistics().tasks_waiting >= WAITING:
            raise ApiError(
                503,
                "events_busy",
                "too many event batches wait to be written; send it again later",
                {"Retry-After": str(RETRY_BUSY_S)},
            )
        return await anyio.to_thread.run_sync(record, body, limiter=self.writers)


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


async def rate_limit(request: Request) -> None:
    """The address's and everyone's share (`EventGate.admit`), before the body is read."""
    client = address_key(request.client.host) if request.client is not None else "unknown"
    request.app.state.event_gate.admit(client)


def _json(model: EventsOut | EventsRefusedOut, status: int) -> Response:
    return Response(model.model_dump_json(), status, media_type="application/json")


def _refused(code: str, message: str, rejected: list[EventProblem]) -> Response:
    return _json(EventsRefusedOut(error=code, message=message, rejected=rejected), 422)


def _none_logged(rejected: list[EventProblem]) -> str:
    reasons = "; ".join(problem.message for problem in rejected[:3])
    more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
    return f"nothing was logged ({len(rejected)} refused): {reasons}{more}"


@router.post(
    EVENTS_PATH,
    response_model=EventsOut,
    responses=RESPONSES,
    dependencies=[Depends(rate_limit)],
    openapi_extra=BODY,
    tags=["events"],
)
async def post_events(request: Request, engine: EngineDep) -> Response:
    """Log what the page showed and what the shopper did with it: impressions (a result list
    with its query id, kind, positions and the model and index that ranked it), clicks, carts
    and purchases, under an opaque session id (nothing else about the shopper is kept). Each
    event is checked alone: the good ones are logged (durably, before the answer) even when
    others are refused, and `rejected` names those by their place in the batch."""
    if engine.events is None:
        raise ApiError(503, "events_unavailable", "the event log could not be opened")
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
    gate: EventGate = request.app.state.event_gate
    try:
        result = await gate.write(engine.record_events, body)
    except BatchError as exc:
        if exc.code == "too_many_events":
            raise ApiError(413, exc.code, f"{exc}; send smaller batches") from None
        return _refused(exc.code, str(exc), [])
    except EventLogFullError as exc:
        if not gate.full_reported:  # once, not once a batch
            gate.full_reported = True
            log.error("shopper events are no longer logged: %s", exc)
        message = "the event log is full; nothing is logged until it is archived"
        raise ApiError(507, "events_full", message) from None
    except sqlite3.OperationalError as exc:  # locked past its timeout, or the disk is full
        log.warning("shopper events not logged: %s", exc)
        message = "the event log cannot take the batch now; send it again later"
        retry = {"Retry-After": str(RETRY_UNAVAILABLE_S)}
        raise ApiError(503, "events_unavailable", message, retry) from None
    if result.accepted == 0:
        return _refused("no_events_accepted", _none_logged(result.rejected), result.rejected)
    return _json(EventsOut(accepted=result.accepted, rejected=result.rejected), 200)


def install_event_schemas(app: FastAPI) -> None:
    """Add `EventBatch` and the event models it names to the app's /openapi.json components,
    where the route's request body refers to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            batch = EventBatch.model_json_schema(ref_template=SCHEMA_REF + "{model}")
            models = {**batch.pop("$defs", {}), "EventBatch": batch}
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in models.items():
                if schemas.setdefault(name, schema) != schema:
                    raise RuntimeError(f"two API models are named {name!r}; rename one")
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
