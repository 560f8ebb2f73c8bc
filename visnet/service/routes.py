"""HTTP routes: search, products, images, categories, health, metrics; errors raised here.

Routes speak HTTP only: they take typed parameters (bounds in /openapi.json), get the engine as
a dependency, and turn its domain answers into the response models of `schemas.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Security, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from visnet.data.catalog import MAX_BRAND
from visnet.data.samples import Sample, list_samples, sample_file
from visnet.feedback.event_schema import new_query_id
from visnet.index.products import Product, ProductFilter
from visnet.service import files
from visnet.service.answers import Match, ObjectResults, ProductPage, SearchResults, Similar
from visnet.service.engine import Engine
from visnet.service.errors import ApiError, errors
from visnet.service.guards import API_KEY
from visnet.service.metrics import CONTENT_TYPE_LATEST
from visnet.service.schemas import (
    CATEGORY_PATTERN,
    DEFAULT_K,
    DEFAULT_PAGE,
    MAX_K,
    MAX_PAGE,
    MAX_PRICE,
    PRODUCT_ID_PATTERN,
    BrandOut,
    CategoriesOut,
    CategoryOut,
    DeletedOut,
    FacetsOut,
    FiltersIn,
    HealthOut,
    ProductOut,
    ProductsOut,
    QueryOut,
    ReadyOut,
    ResultOut,
    SampleOut,
    SamplesOut,
    SearchOut,
    SimilarOut,
)
from visnet.service.settings import ServiceSettings

__all__ = ["EngineDep", "SettingsDep", "WRITE", "engine_of", "router", "settings_of"]

router = APIRouter()

IMAGE_CACHE = "public, max-age=3600"
IMAGE_CONTENT: dict[str, Any] = {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}}
WRITE = [Security(API_KEY)]  # checked by guards.ApiKeyMiddleware before the body is read


async def engine_of(request: Request) -> Engine:
    """The loaded engine, or 503 while the service is starting or stopping (async: a plain
    function dependency would cost a thread hop per request)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "not_ready", "the model and the index are not loaded yet; retry soon")
    return engine


async def settings_of(request: Request) -> ServiceSettings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(engine_of)]
SettingsDep = Annotated[ServiceSettings, Depends(settings_of)]
ProductId = Annotated[str, Path(pattern=PRODUCT_ID_PATTERN, description="a catalog product id")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]
FiltersQuery = Annotated[FiltersIn, Query()]
FiltersForm = Annotated[FiltersIn, Form()]


def image_url(product_id: str, view: int) -> str:
    return f"/v1/images/{product_id}/{view}"


def result_fields(match: Match) -> dict[str, Any]:
    """One result entry as the API answers it (`ResultOut`); the one place that shape is made."""
    return {
        "product_id": match.product_id,
        "title": match.title,
        "category": match.category,
        "score": round(match.score, 5),
        "image_url": image_url(match.product_id, 0) if match.views else None,
        "price": match.price,
        "brand": match.brand,
        "in_stock": match.in_stock,
        "duplicates": list(match.duplicates),
    }


def product_filter(filters: FiltersIn) -> ProductFilter | None:
    """The request's filters as the index takes them; None when they filter nothing."""
    found = ProductFilter(
        filters.min_price, filters.max_price, tuple(dict.fromkeys(filters.brand)), filters.in_stock
    )
    return found or None


def similar_json(found: Similar, engine: Engine) -> Response:
    """The /similar answer (`SimilarOut`) as JSON bytes straight from orjson, on the hot path:
    building the pydantic models made a whole k=20 request cost about 1.4x the CPU (330 against
    230 us in process). `tests/service/test_service.py` checks the bytes are exactly a
    `SimilarOut`. Each answer is a new list for the page's impressions: a fresh query id."""
    results = [result_fields(m) for m in found.matches]
    body = {
        "product_id": found.product_id,
        "query_id": new_query_id(),
        "model": engine.model_token,
        "index": engine.index_token,
        "source": found.source,
        "results": results,
        "duplicates": list(found.duplicates),
    }
    return Response(orjson.dumps(body), media_type="application/json")


def query_out(found: ObjectResults) -> QueryOut:
    return QueryOut(
        query_id=new_query_id(),
        query_image=found.query_image,
        box=None if found.box is None else [round(v, 1) for v in found.box],
        category=found.category,
        label=found.label,
        score=None if found.score is None else round(found.score, 4),
        label_score=None if found.label_score is None else round(found.label_score, 4),
        results=[ResultOut(**result_fields(m)) for m in found.matches],
    )


def search_out(found: SearchResults, engine: Engine) -> SearchOut:
    took_ms = round(1000 * found.seconds, 2)
    return SearchOut(
        queries=[query_out(obj) for obj in found.objects],
        took_ms=took_ms,
        model=engine.model_token,
        index=engine.index_token,
    )


def products_out(page: ProductPage) -> ProductsOut:
    products = [product_out(product) for product in page.products]
    return ProductsOut(products=products, next_cursor=page.next_cursor, total=page.total)


def product_out(product: Product) -> ProductOut:
    return ProductOut(
        id=product.id,
        category=product.category,
        title=product.title,
        images=[image_url(product.id, view) for view in range(len(product.images))],
        attributes=product.attributes,
        price=product.price,
        brand=product.brand,
        in_stock=product.in_stock,
        created=product.created,
        updated=product.updated,
    )


# ---- search ----------------------------------------------------------------------------------


@router.post(
    "/v1/search",
    response_model=SearchOut,
    responses=errors(400, 413, 415, 422, 503),
    tags=["search"],
)
async def search(
    engine: EngineDep,
    image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, ...)")],
    filters: FiltersForm,
    category: Annotated[
        str | None, Form(pattern=CATEGORY_PATTERN, description="search this category only")
    ] = None,
    k: Annotated[int, Form(ge=1, le=MAX_K, description="results per object")] = DEFAULT_K,
) -> SearchOut:
    """Find the catalog products in a photo: one result list per detected object (the whole photo
    when no detector is configured or nothing is found), each of the products that pass the
    filters, near-duplicate listings collapsed into one result."""
    data = await image.read()
    wanted = product_filter(filters)
    found = await run_in_threadpool(engine.search, data, k, category, wanted)
    return search_out(found, engine)


SIMILAR_PATH = "/v1/products/{product_id}/similar"


@router.get(
    SIMILAR_PATH,
    response_model=SimilarOut,
    responses=errors(404, 422, 503),
    tags=["products"],
)
async def similar(
    engine: EngineDep,
    product_id: ProductId,
    filters: FiltersQuery,
    k: K = DEFAULT_K,
    same_category: bool = True,
) -> Response:
    """Products that look like this one ("more like this"), itself and its own other listings
    excluded, of the products that pass the filters (answered live when any is given)."""
    # cached, or one indexed SQLite read of the stored list, here on the event loop: a thread
    # hop would cost more than the read (benchmarks/api.py, 1M products); else live in a thread
    wanted = product_filter(filters)
    found = engine.quick_similar(product_id, k, same_category, wanted)
    if found is None:
        live = engine.live_similar
        found = await run_in_threadpool(live, product_id, k, same_category, wanted)
    return similar_json(found, engine)


class SimilarFastPath:
    """The plain ``GET /v1/products/{id}/similar`` (``k`` and ``same_category`` at most) whose
    answer is cached or stored, answered here without FastAPI's routing and parameter parsing;
    every other request, and any such request this cannot answer, goes on to the route above.

    The answer is `similar_json`'s bytes, as the route's. On the stored path the routing and
    parameter parsing cost about twice the answer's own work (in-process: about 0.2 ms of
    framework around 0.1 ms of SQLite read and JSON), which held the 10M-product catalog under
    2,000 requests/s (`benchmarks/api.py`, docs/SCALE.md). Anything not exactly plain falls
    through: a filter, an id off `PRODUCT_ID_PATTERN`, a k out of 1..MAX_K or not plain digits,
    a ``same_category`` other than true/false/1/0, a repeated parameter, the engine not loaded,
    no cached or stored list, or an error; so the route keeps every check and error answer.
    `tests/service/test_service.py` checks both give the same answers. Installed innermost of
    the app's middlewares (`app.create_app`): metrics, headers and guards still see it.
    """

    PATH = re.compile(r"/v1/products/([^/]+)/similar")
    FLAGS = {"true": True, "1": True, "false": False, "0": False}

    def __init__(self, app: Any) -> None:
        self.app = app
        self.route = next(r for r in router.routes if getattr(r, "path", "") == SIMILAR_PATH)
        self.ids = re.compile(PRODUCT_ID_PATTERN)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        answer = self._answer(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
        else:
            await answer(scope, receive, send)

    def _answer(self, scope: Any) -> Response | None:
        found = self.PATH.fullmatch(scope["path"])
        if scope["method"] != "GET" or found is None or scope.get("root_path"):
            return None
        product_id = found.group(1)
        asked = self._query(scope["query_string"])
        engine = getattr(scope["app"].state, "engine", None)
        if asked is None or engine is None or not self.ids.fullmatch(product_id):
            return None
        try:
            similar = engine.quick_similar(product_id, *asked)
        except Exception:  # the route answers it, with its own error handling
            return None
        if similar is None:
            return None
        scope["route"] = self.route  # as the router marks it (metrics' label)
        return similar_json(similar, engine)

    def _query(self, raw: bytes) -> tuple[int, bool] | None:
        """(k, same_category) of a plain query string, else None."""
        k, same_category = DEFAULT_K, True
        seen = set()
        for part in raw.split(b"&") if raw else ():
            name, eq, value = part.partition(b"=")
            if not eq or name in seen:
                return None
            seen.add(name)
            if name == b"k" and value.isdigit() and len(value) <= 3:
                k = int(value)
                if not 1 <= k <= MAX_K:
                    return None
            elif name == b"same_category" and value.decode("latin-1") in self.FLAGS:
                same_category = self.FLAGS[value.decode("latin-1")]
            else:
                return None
        return k, same_category


# ---- products ----------------------------------------------------------------------------------


@router.get(
    "/v1/products", response_model=ProductsOut, responses=errors(422, 503), tags=["products"]
)
async def list_products(
    engine: EngineDep,
    category: Annotated[
        str | None, Query(pattern=CATEGORY_PATTERN, description="list this category only")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(
            pattern=PRODUCT_ID_PATTERN,
            description="the `next_cursor` of the previous page; none: the first page",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="products per page")] = DEFAULT_PAGE,
) -> ProductsOut:
    """Browse the catalog a page at a time, in product id order, optionally one category (an
    unknown category gives an empty page). `GET /v1/categories` lists the categories."""
    return products_out(await run_in_threadpool(engine.browse, category, cursor, limit))


@router.get(
    "/v1/products/{product_id}",
    response_model=ProductOut,
    responses=errors(404, 422, 503),
    tags=["products"],
)
async def get_product(engine: EngineDep, product_id: ProductId) -> ProductOut:
    """One product: category, title, image URLs (one per view), attributes."""
    return product_out(await run_in_threadpool(engine.product, product_id))


@router.post(
    "/v1/products",
    response_model=ProductOut,
    status_code=201,
    responses={
        200: {"model": ProductOut, "description": "the product was replaced"},
        **errors(400, 401, 403, 413, 415, 422, 503),
    },
    dependencies=WRITE,
    tags=["products"],
)
async def put_product(
    engine: EngineDep,
    settings: SettingsDep,
    response: Response,
    id: Annotated[str, Form(pattern=PRODUCT_ID_PATTERN)],
    category: Annotated[str, Form(pattern=CATEGORY_PATTERN)],
    images: Annotated[list[UploadFile], File(description="one file per view")],
    title: Annotated[str, Form(max_length=300)] = "",
    price: Annotated[
        float | None, Form(ge=0, le=MAX_PRICE, description="in the catalog's currency")
    ] = None,
    brand: Annotated[str | None, Form(min_length=1, max_length=MAX_BRAND)] = None,
    in_stock: Annotated[bool | None, Form()] = None,
) -> ProductOut:
    """Create (201) or replace (200) a product from its images; searchable at the next query.
    A field left out is not known (a replaced product keeps no old value). Needs the X-API-Key
    header."""
    limit = settings.max_images_per_product
    if not 1 <= len(images) <= limit:
        raise ApiError(422, "invalid_request", f"send 1..{limit} images; got {len(images)}")
    data = [await upload.read() for upload in images]
    offer = {"price": price, "brand": (brand or "").strip() or None, "in_stock": in_stock}
    product, created = await run_in_threadpool(engine.ingest, id, category, title, data, offer)
    response.status_code = 201 if created else 200
    return product_out(product)


@router.delete(
    "/v1/products/{product_id}",
    response_model=DeletedOut,
    responses=errors(401, 403, 404, 422, 503),
    dependencies=WRITE,
    tags=["products"],
)
async def delete_product(engine: EngineDep, product_id: ProductId) -> DeletedOut:
    """Remove a product from the catalog. Needs the X-API-Key header."""
    await run_in_threadpool(engine.delete, product_id)
    return DeletedOut(id=product_id, deleted=True)


@router.get(
    "/v1/categories", response_model=CategoriesOut, responses=errors(503), tags=["products"]
)
async def categories(engine: EngineDep) -> CategoriesOut:
    """The catalog's categories with their product counts."""
    counts = await run_in_threadpool(engine.categories)
    listed = [CategoryOut(name=name, count=count) for name, count in sorted(counts.items())]
    return CategoriesOut(categories=listed, total=sum(counts.values()))


@router.get("/v1/facets", response_model=FacetsOut, responses=errors(503), tags=["products"])
async def facets(engine: EngineDep) -> FacetsOut:
    """What the products can be filtered on: the brands they have with their product counts
    (what the `brand` filter takes), how many have a price and its range, how many a known
    stock flag (a filter on a field no product has matches nothing: the page hides it)."""
    found = await run_in_threadpool(engine.facets)
    listed = [BrandOut(name=name, count=count) for name, count in found.brands.items()]
    return FacetsOut(
        brands=listed,
        branded=sum(found.brands.values()),
        priced=found.priced,
        price_min=found.price_min,
        price_max=found.price_max,
        stocked=found.stocked,
    )


@router.get(
    "/v1/images/{product_id}/{view}",
    responses={200: IMAGE_CONTENT, **errors(404, 422, 503)},
    response_class=Response,
    tags=["products"],
)
async def product_image(
    engine: EngineDep,
    product_id: ProductId,
    view: Annotated[int, Path(ge=0, le=63, description="view number, from 0")],
) -> Response:
    """One catalog image of a product, by view number (never by path)."""
    path = await run_in_threadpool(engine.image_file, product_id, view)
    if path is None:
        raise ApiError(404, "image_not_found", f"product {product_id!r} has no image view {view}")
    headers = {"Cache-Control": IMAGE_CACHE, "X-Content-Type-Options": "nosniff"}
    return FileResponse(path, media_type=files.media_type(path), headers=headers)


# ---- sample photos ---------------------------------------------------------------------------


def sample_url(name: str) -> str:
    return f"/v1/samples/{name}"


def sample_out(sample: Sample) -> SampleOut:
    return SampleOut(
        name=sample.name,
        title=sample.title,
        credit=sample.credit,
        image_url=sample_url(sample.name),
    )


@router.get("/v1/samples", response_model=SamplesOut, tags=["search"])
async def samples(settings: SettingsDep) -> SamplesOut:
    """Sample photos to try a search with (`visnet samples` writes them; the `samples_dir`
    setting says where): an empty list when there are none."""
    found = await run_in_threadpool(list_samples, settings.samples_folder)
    return SamplesOut(samples=[sample_out(sample) for sample in found])


@router.get(
    "/v1/samples/{name}",
    responses={200: IMAGE_CONTENT, **errors(404)},
    response_class=Response,
    tags=["search"],
)
async def sample_image(
    settings: SettingsDep,
    name: Annotated[str, Path(description="a sample's name, as `GET /v1/samples` lists it")],
) -> Response:
    """One sample photo, by name (a file directly in the samples folder, never a path)."""
    path = await run_in_threadpool(sample_file, settings.samples_folder, name)
    if path is None:
        raise ApiError(404, "sample_not_found", f"there is no sample photo {name!r}")
    # nosniff: PageHeadersMiddleware adds it to every response
    headers = {"Cache-Control": IMAGE_CACHE}
    return FileResponse(path, media_type=files.media_type(path), headers=headers)


# ---- operations --------------------------------------------------------------------------------


@router.get("/healthz", response_model=HealthOut, tags=["operations"])
async def healthz() -> HealthOut:
    """The process is up (liveness)."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, responses=errors(503), tags=["operations"])
async def readyz(engine: EngineDep, settings: SettingsDep) -> ReadyOut:
    """The model and the index are loaded (readiness)."""
    return ReadyOut(
        status="ready",
        model=engine.model_name,
        products=await run_in_threadpool(engine.product_count),
        detector=engine.detector is not None,
        review=settings.review_queue is not None,
        writes=settings.writes_enabled,
        recommendations_fresh=engine.recommendations.fresh,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    tags=["operations"],
)
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests by route and status, latencies, index size."""
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
