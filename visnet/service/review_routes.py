"""Triplet review over HTTP: next pending triplet, decisions (need the key), stats, its images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from visnet.service import files
from visnet.service.errors import ApiError
from visnet.service.routes import ERRORS, require_key
from visnet.service.schemas import FastJSON, ReviewDecisionIn, ReviewNextOut, ReviewStatsOut
from visnet.triplets.review import QueuedTriplet, ReviewQueue

__all__ = ["ReviewDesk", "router"]

router = APIRouter(prefix="/v1/review", tags=["review"])

ROLES = ("query", "positive", "negative")
TripletId = Annotated[int, PathParam(ge=1, le=2**62)]


class ReviewDesk:
    """The review queue file and the data root its image paths are relative to.

    The queue's SQLite connection belongs to one thread, and routes run on a thread pool, so each
    call opens the file (cheap: WAL, a few pragmas) and closes it.
    """

    def __init__(self, queue: Path, root: Path | None) -> None:
        if not queue.is_file():
            raise FileNotFoundError(f"review queue {queue} not found; create it first")
        self.queue = queue
        with ReviewQueue(queue, create=False) as opened:
            self.root = root or opened.root

    def _open(self) -> ReviewQueue:
        return ReviewQueue(self.queue, create=False)

    def stats(self) -> dict[str, int]:
        with self._open() as queue:
            return queue.counts()

    def next(self, after: int) -> dict[str, Any]:
        with self._open() as queue:
            item = queue.next_pending(after)
            return {"triplet": item and triplet_out(item), "counts": queue.counts()}

    def decide(self, triplet_id: int, status: str, reviewer: str) -> dict[str, Any]:
        with self._open() as queue:
            try:
                item = queue.decide(triplet_id, status, reviewer)
            except KeyError:
                raise unknown_triplet(triplet_id) from None
            return {"triplet": triplet_out(item), "counts": queue.counts()}

    def image(self, triplet_id: int, role: str) -> Path | None:
        with self._open() as queue:
            try:
                ref = queue.get(triplet_id).line.get(role) or {}
            except KeyError:
                raise unknown_triplet(triplet_id) from None
        return files.resolve_under(self.root, str(ref.get("image", "")))


def unknown_triplet(triplet_id: int) -> ApiError:
    return ApiError(404, "unknown_triplet", f"no triplet with id {triplet_id} in the review queue")


def triplet_out(item: QueuedTriplet) -> dict[str, Any]:
    line = item.line
    members = {
        role: {
            "image_url": f"/v1/review/{item.id}/images/{role}",
            "image": str(line[role].get("image", "")),
            "bbox": line[role].get("bbox"),
            "product": _text(line.get(f"{role}_product")),
        }
        for role in ROLES
    }
    notes = {k: v for k, v in line.items() if k not in (*ROLES, "kind", "category")}
    return {
        "id": item.id,
        "kind": str(line.get("kind", "catalog")),
        "category": _text(line.get("category")),
        "status": item.status,
        "reviewer": item.reviewer,
        **members,
        "notes": notes,
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def desk_of(request: Request) -> ReviewDesk:
    desk = getattr(request.app.state, "review", None)
    if desk is None:
        raise ApiError(
            404,
            "review_not_configured",
            "no review queue is configured; start the server with --review-queue FILE",
        )
    return desk


@router.get("/stats", response_model=ReviewStatsOut, responses=ERRORS)
async def review_stats(request: Request) -> Response:
    """Triplets per status, and the total."""
    return FastJSON(await run_in_threadpool(desk_of(request).stats))


@router.get("/next", response_model=ReviewNextOut, responses=ERRORS)
async def review_next(
    request: Request, after: Annotated[int, Query(ge=0, le=2**62)] = 0
) -> Response:
    """The first pending triplet after id `after` (wrapping round); null when none is left."""
    return FastJSON(await run_in_threadpool(desk_of(request).next, after))


@router.post("/{triplet_id}", response_model=ReviewNextOut, responses=ERRORS)
async def review_decide(
    request: Request,
    triplet_id: TripletId,
    decision: ReviewDecisionIn,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Approve or reject a triplet (a later decision replaces an earlier). Needs X-API-Key."""
    require_key(request, x_api_key)
    desk = desk_of(request)
    result = await run_in_threadpool(desk.decide, triplet_id, decision.status, decision.reviewer)
    return FastJSON(result)


@router.get(
    "/{triplet_id}/images/{role}",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
async def review_image(
    request: Request,
    triplet_id: TripletId,
    role: Annotated[str, PathParam(pattern="^(query|positive|negative)$")],
) -> Response:
    """A triplet member's image, from under the data root only."""
    path = await run_in_threadpool(desk_of(request).image, triplet_id, role)
    if path is None:
        raise ApiError(404, "image_not_found", f"triplet {triplet_id} has no readable {role} image")
    headers = {"Cache-Control": "private, max-age=600", "X-Content-Type-Options": "nosniff"}
    return FileResponse(path, media_type=files.media_type(path), headers=headers)
