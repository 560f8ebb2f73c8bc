"""Shopper events: ``POST /v1/events`` logs the page's impressions, clicks, carts and purchases.

The body is read here, not by FastAPI, which would refuse a whole batch for one bad event: the
batch is checked event by event (`visnet.feedback.events.parse_batch`), the good events logged
in the index folder's ``events.sqlite`` before the answer, the others named. /openapi.json still
shows the body's true schema (`EventBatch`: `install_event_schemas` adds its models).

The one rule for the answer, from `BatchResult`: 200 `EventsOut` when at least one event was
logged (`rejected` names the others, which need not be sent again); 422 `EventsRefusedOut` when
none was (`no_events_accepted`, each event named; `invalid_batch`, no session or no list of
events). 413 for an oversized batch: over `MAX_EVENTS` events (`too_many_events`) or over the
``max_event_bytes`` setting (`upload_too_large`, before the body is read); 400 `bad_request` for
a body that is not JSON; 429 `rate_limited` with Retry-After for a client address past its
share (``events_rate``, ``events_burst``; an IPv6 address counts by its /64), checked before the
body is read; 503 `events_unavailable` with Retry-After when the log cannot take the batch (locked
past its timeout, or its disk full).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from visnet.feedback.events import MAX_EVENTS, BatchError, EventBatch, EventProblem
from visnet.feedback.limits import RateLimiter, address_key
from visnet.service.errors import ApiError
from visnet.service.routes import EngineDep
from visnet.service.schemas import ErrorOut, EventsOut, EventsRefusedOut
from visnet.service.settings import ServiceSettings

__all__ = ["EVENTS_PATH", "event_limiter", "install_event_schemas", "router"]

log = logging.getLogger(__name__)
router = APIRouter()

EVENTS_PATH = "/v1/events"
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
        "description": "the index is not loaded yet (`not_ready`), or its event log could not "
        "be opened or could not take the batch (`events_unavailable`; send it again after "
        "Retry-After seconds)",
    },
}
BODY = {
    "requestBody": {
        "required": True,
        "description": f"a session id and 1..{MAX_EVENTS} events, checked one by one",
        "content": {"application/json": {"schema": {"$ref": f"{SCHEMA_REF}EventBatch"}}},
    }
}


def event_limiter(settings: ServiceSettings) -> RateLimiter:
    """The per-address limit on event batches (`app.state.event_limiter`)."""
    return RateLimiter(settings.events_rate, settings.events_burst)


async def rate_limit(request: Request) -> None:
    """429 with Retry-After past the client address's share; before the body is read."""
    limiter: RateLimiter = request.app.state.event_limiter
    client = address_key(request.client.host) if request.client is not None else "unknown"
    wait = limiter.acquire(client)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            "rate_limited",
            f"too many event batches from this address; send again in {seconds} s",
            {"Retry-After": str(seconds)},
        )


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
    try:
        result = await run_in_threadpool(engine.record_events, body)
    except BatchError as exc:
        if exc.code == "too_many_events":
            raise ApiError(413, exc.code, f"{exc}; send smaller batches") from None
        return _refused(exc.code, str(exc), [])
    except sqlite3.OperationalError as exc:  # locked past its timeout, or the disk is full
        log.warning("shopper events not logged: %s", exc)
        message = "the event log cannot take the batch now; send it again later"
        raise ApiError(503, "events_unavailable", message, {"Retry-After": "5"}) from None
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
