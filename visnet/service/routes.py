"""HTTP routes: search, products, images, categories, health, metrics; errors raised here."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Path, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from visnet.service import files
from visnet.service.engine import Engine, image_url
from visnet.service.errors import ApiError
from visnet.service.metrics import CONTENT_TYPE_LATEST
from visnet.service.schemas import (
    CATEGORY_PATTERN,
    PRODUCT_ID_PATTERN,
    CategoriesOut,
    ErrorOut,
    FastJSON,
    ProductOut,
    SearchOut,
    SimilarOut,
)

__all__ = ["engine_of", "require_key", "router"]

router = APIRouter()

ProductId = Annotated[str, Path(pattern=PRODUCT_ID_PATTERN, description="a catalog product id")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 415, 422, 503)
}
IMAGE_CACHE = "public, max-age=3600"


def engine_of(request: Request) -> Engine:
    """The loaded engine, or 503 while the service is starting or stopping."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "not_ready", "the model and the index are not loaded yet; retry soon")
    return engine


def require_key(request: Request, key: str | None) -> None:
    """Writes need the configured key: none configured -> 403, missing or wrong -> 401."""
    expected = request.app.state.settings.api_key
    if expected is None:
        raise ApiError(
            403,
            "writes_disabled",
            "write endpoints are disabled: the server has no API key configured "
            "(start it with --api-key or VISNET_API_KEY)",
        )
    if not key or not hmac.compare_digest(key.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


def check_k(request: Request, k: int | None) -> int:
    settings = request.app.state.settings
    if k is None:
        return int(settings.default_k)
    if not 1 <= k <= settings.max_k:
        raise ApiError(422, "invalid_request", f"k must be in 1..{settings.max_k}; got {k}")
    return k


def product_out(product: Any) -> dict[str, Any]:
    return {
        "id": product.id,
        "category": product.category,
        "title": product.title,
        "images": [image_url(product, view) for view in range(len(product.images))],
        "attributes": product.attributes,
        "created": product.created,
        "updated": product.updated,
    }


# ---- search ----------------------------------------------------------------------------------


@router.post("/v1/search", response_model=SearchOut, responses=ERRORS, tags=["search"])
async def search(
    request: Request,
    image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, ...)")],
    category: Annotated[str | None, Form(pattern=CATEGORY_PATTERN)] = None,
    k: Annotated[int | None, Form()] = None,
) -> Response:
    """Find the catalog products in a photo: one result list per detected object (the whole photo
    when no detector is configured or nothing is found)."""
    engine, k = engine_of(request), check_k(request, k)
    data = await image.read()
    return FastJSON(await run_in_threadpool(engine.search, data, k, category or None))


@router.get(
    "/v1/products/{product_id}/similar",
    response_model=SimilarOut,
    responses=ERRORS,
    tags=["products"],
)
async def similar(
    request: Request,
    product_id: ProductId,
    k: Annotated[int | None, Query()] = None,
    same_category: Annotated[bool, Query()] = True,
) -> Response:
    """Products that look like this one ("more like this"), itself excluded."""
    engine, k = engine_of(request), check_k(request, k)
    # cached, or one indexed SQLite read of the stored list, here on the event loop: a thread
    # hop would cost more than the read (benchmarks/api.py, 1M products); else live in a thread
    body = engine.cached_similar(product_id, k, same_category)
    if body is None:
        body = engine.precomputed_similar(product_id, k, same_category)
    if body is None:
        body = await run_in_threadpool(engine.live_similar, product_id, k, same_category)
    return FastJSON(body)


# ---- products ----------------------------------------------------------------------------------


@router.get(
    "/v1/products/{product_id}", response_model=ProductOut, responses=ERRORS, tags=["products"]
)
async def get_product(request: Request, product_id: ProductId) -> Response:
    """One product: category, title, image URLs (one per view), attributes."""
    product = await run_in_threadpool(engine_of(request).product, product_id)
    return FastJSON(product_out(product))


@router.post(
    "/v1/products",
    response_model=ProductOut,
    status_code=201,
    responses=ERRORS,
    tags=["products"],
)
async def put_product(
    request: Request,
    id: Annotated[str, Form(pattern=PRODUCT_ID_PATTERN)],
    category: Annotated[str, Form(pattern=CATEGORY_PATTERN)],
    images: Annotated[list[UploadFile], File(description="one file per view")],
    title: Annotated[str, Form(max_length=300)] = "",
    x_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Create (201) or replace (200) a product from its images; searchable at the next query.
    Needs the X-API-Key header."""
    require_key(request, x_api_key)
    engine = engine_of(request)
    limit = engine.settings.max_images_per_product
    if not 1 <= len(images) <= limit:
        raise ApiError(422, "invalid_request", f"send 1..{limit} images; got {len(images)}")
    data = [await upload.read() for upload in images]
    product, created = await run_in_threadpool(engine.ingest, id, category, title, data)
    return FastJSON(product_out(product), status_code=201 if created else 200)


@router.delete("/v1/products/{product_id}", responses=ERRORS, tags=["products"])
async def delete_product(
    request: Request,
    product_id: ProductId,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Remove a product from the catalog. Needs the X-API-Key header."""
    require_key(request, x_api_key)
    await run_in_threadpool(engine_of(request).delete, product_id)
    return FastJSON({"id": product_id, "deleted": True})


@router.get("/v1/categories", response_model=CategoriesOut, tags=["products"])
async def categories(request: Request) -> Response:
    """The catalog's categories with their product counts."""
    counts = await run_in_threadpool(engine_of(request).categories)
    listed = [{"name": name, "count": count} for name, count in sorted(counts.items())]
    return FastJSON({"categories": listed, "total": sum(counts.values())})


@router.get(
    "/v1/images/{product_id}/{view}",
    responses={**ERRORS, 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    response_class=Response,
    tags=["products"],
)
async def product_image(
    request: Request,
    product_id: ProductId,
    view: Annotated[int, Path(ge=0, le=63, description="view number, from 0")],
) -> Response:
    """One catalog image of a product, by view number (never by path)."""
    engine = engine_of(request)
    path = await run_in_threadpool(engine.image_file, product_id, view)
    if path is None:
        raise ApiError(404, "image_not_found", f"product {product_id!r} has no image view {view}")
    return FileResponse(path, media_type=files.media_type(path), headers=_image_headers())


def _image_headers() -> dict[str, str]:
    return {"Cache-Control": IMAGE_CACHE, "X-Content-Type-Options": "nosniff"}


# ---- operations --------------------------------------------------------------------------------


@router.get("/healthz", tags=["operations"])
async def healthz() -> Response:
    """The process is up (liveness)."""
    return FastJSON({"status": "ok"})


@router.get("/readyz", responses={503: {"model": ErrorOut}}, tags=["operations"])
async def readyz(request: Request) -> Response:
    """The model and the index are loaded (readiness)."""
    engine = engine_of(request)
    count = await run_in_threadpool(engine.index.count)
    return FastJSON(
        {
            "status": "ready",
            "model": engine.model_name,
            "products": count,
            "detector": engine.detector is not None,
            "review": request.app.state.settings.review_queue is not None,
            "writes": request.app.state.settings.writes_enabled,
            "recommendations_fresh": engine.recommendations.fresh,
        }
    )


@router.get("/metrics", response_class=Response, tags=["operations"])
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests by route and status, latencies, index size."""
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
