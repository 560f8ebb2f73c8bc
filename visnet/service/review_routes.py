"""Triplet review over HTTP: next pending triplet, decisions (need the key), stats, its images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from visnet.service import files
from visnet.service.errors import ApiError, errors
from visnet.service.routes import IMAGE_CONTENT, WRITE
from visnet.service.schemas import (
    ReviewDecisionIn,
    ReviewNextOut,
    ReviewStatsOut,
    TripletMemberOut,
    TripletOut,
)
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

    def stats(self) -> ReviewStatsOut:
        with self._open() as queue:
            return ReviewStatsOut(**queue.counts())

    def next(self, after: int) -> ReviewNextOut:
        with self._open() as queue:
            item = queue.next_pending(after)
            triplet = None if item is None else triplet_out(item)
            return ReviewNextOut(triplet=triplet, counts=ReviewStatsOut(**queue.counts()))

    def decide(self, triplet_id: int, status: str, reviewer: str) -> ReviewNextOut:
        with self._open() as queue:
            try:
                item = queue.decide(triplet_id, status, reviewer)
            except KeyError:
                raise unknown_triplet(triplet_id) from None
            return ReviewNextOut(triplet=triplet_out(item), counts=ReviewStatsOut(**queue.counts()))

    def image(self, triplet_id: int, role: str) -> Path | None:
        with self._open() as queue:
            try:
                ref = queue.get(triplet_id).line.get(role) or {}
            except KeyError:
                raise unknown_triplet(triplet_id) from None
        return files.resolve_under(self.root, str(ref.get("image", "")))


def unknown_triplet(triplet_id: int) -> ApiError:
    return ApiError(404, "unknown_triplet", f"no triplet with id {triplet_id} in the review queue")


def triplet_out(item: QueuedTriplet) -> TripletOut:
    line = item.line
    members = {
        role: TripletMemberOut(
            image_url=f"/v1/review/{item.id}/images/{role}",
            image=str(line[role].get("image", "")),
            bbox=line[role].get("bbox"),
            product=_text(line.get(f"{role}_product")),
        )
        for role in ROLES
    }
    notes = {k: v for k, v in line.items() if k not in (*ROLES, "kind", "category")}
    return TripletOut(
        id=item.id,
        kind=str(line.get("kind", "catalog")),
        category=_text(line.get("category")),
        status=item.status,
        reviewer=item.reviewer,
        notes=notes,
        **members,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


async def desk_of(request: Request) -> ReviewDesk:
    """The review desk, or 404 when the server has no review queue."""
    desk = getattr(request.app.state, "review", None)
    if desk is None:
        raise ApiError(
            404,
            "review_not_configured",
            "no review queue is configured; start the server with --review-queue FILE",
        )
    return desk


DeskDep = Annotated[ReviewDesk, Depends(desk_of)]


@router.get("/stats", response_model=ReviewStatsOut, responses=errors(404))
async def review_stats(desk: DeskDep) -> ReviewStatsOut:
    """Triplets per status, and the total."""
    return await run_in_threadpool(desk.stats)


@router.get("/next", response_model=ReviewNextOut, responses=errors(404, 422))
async def review_next(
    desk: DeskDep, after: Annotated[int, Query(ge=0, le=2**62)] = 0
) -> ReviewNextOut:
    """The first pending triplet after id `after` (wrapping round); null when none is left."""
    return await run_in_threadpool(desk.next, after)


@router.post(
    "/{triplet_id}",
    response_model=ReviewNextOut,
    responses=errors(400, 401, 403, 404, 413, 422),
    dependencies=WRITE,
)
async def review_decide(
    desk: DeskDep, triplet_id: TripletId, decision: ReviewDecisionIn
) -> ReviewNextOut:
    """Approve or reject a triplet (a later decision replaces an earlier). Needs X-API-Key."""
    return await run_in_threadpool(desk.decide, triplet_id, decision.status, decision.reviewer)


@router.get(
    "/{triplet_id}/images/{role}",
    response_class=Response,
    responses={200: IMAGE_CONTENT, **errors(404, 422)},
)
async def review_image(
    desk: DeskDep,
    triplet_id: TripletId,
    role: Annotated[Literal["query", "positive", "negative"], PathParam()],
) -> Response:
    """A triplet member's image, from under the data root only."""
    path = await run_in_threadpool(desk.image, triplet_id, role)
    if path is None:
        raise ApiError(404, "image_not_found", f"triplet {triplet_id} has no readable {role} image")
    headers = {"Cache-Control": "private, max-age=600", "X-Content-Type-Options": "nosniff"}
    return FileResponse(path, media_type=files.media_type(path), headers=headers)
