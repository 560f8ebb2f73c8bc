"""API shapes: the pydantic models every JSON request and response is (the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from visnet.data.catalog import MAX_BRAND
from visnet.feedback.event_schema import BatchResult, EventProblem
from visnet.index.products import PRODUCT_ID_PATTERN

__all__ = [
    "CATEGORY_PATTERN",
    "DEFAULT_K",
    "DEFAULT_PAGE",
    "MAX_BRANDS",
    "MAX_K",
    "MAX_PAGE",
    "MAX_PRICE",
    "PRODUCT_ID_PATTERN",
    "BrandOut",
    "CategoriesOut",
    "CategoryOut",
    "DeletedOut",
    "ErrorOut",
    "EventsOut",
    "EventsRefusedOut",
    "FacetsOut",
    "FiltersIn",
    "HealthOut",
    "ProductOut",
    "ProductsOut",
    "QueryOut",
    "ReadyOut",
    "ResultOut",
    "ReviewDecisionIn",
    "ReviewNextOut",
    "ReviewStatsOut",
    "SampleOut",
    "SamplesOut",
    "SearchOut",
    "SimilarOut",
    "TripletMemberOut",
    "TripletOut",
]

CATEGORY_PATTERN = r"^[A-Za-z0-9_.\- ]{1,64}$"
DEFAULT_K, MAX_K = 20, 100  # results per list: when not asked, and at most
DEFAULT_PAGE, MAX_PAGE = 24, 100  # products per catalog page: when not asked, and at most
MAX_PRICE = 1e9  # the largest price a product or a filter may name
MAX_BRANDS = 20  # brands one filter may name

Price = Annotated[float, Field(ge=0, le=MAX_PRICE)]
Brand = Annotated[str, Field(min_length=1, max_length=MAX_BRAND)]


class ErrorOut(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. unknown_product")
    message: str = Field(description="what went wrong and what to do, for people")


QUERY_ID = "this result list's id: an impression and a click of it name it (`POST /v1/events`)"
MODEL = "the fingerprint of the model that ranked the results, for impressions"
INDEX = "the id of the index build that served them, for impressions"


class FiltersIn(BaseModel):
    """What a shop filters search results and look-alikes on besides the category, applied
    inside the index (k results still come back when k products pass). A product whose value
    is unknown fails a filter on it."""

    min_price: Price | None = Field(None, description="products priced at least this")
    max_price: Price | None = Field(None, description="products priced at most this")
    brand: list[Brand] = Field(
        default_factory=list,
        max_length=MAX_BRANDS,
        description="products of any of these brands (ASCII letters compared without case); "
        "repeat the parameter for several",
    )
    in_stock: bool | None = Field(
        None, description="true: products in stock only; false: out of stock only"
    )

    @model_validator(mode="after")
    def _ordered(self) -> FiltersIn:
        low, high = self.min_price, self.max_price
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_price {low} is above max_price {high}")
        return self


class ResultOut(BaseModel):
    product_id: str
    title: str
    category: str
    score: float = Field(description="inner product of unit vectors (higher is more alike)")
    image_url: str | None = Field(description="the product's first image; null: it has none")
    price: float | None = Field(description="null: not known")
    brand: str | None = Field(description="null: not known")
    in_stock: bool | None = Field(description="null: not known")
    duplicates: list[str] = Field(
        description="other product ids listing the same picture (a re-listing, another "
        "seller), collapsed into this result"
    )


class QueryOut(BaseModel):
    query_id: str = Field(description=QUERY_ID)
    query_image: str | None = Field(
        default=None,
        description="the id of the crop searched, kept for feedback triplets (an impression's "
        "`query_image`); null: crops are not kept",
    )
    box: list[float] | None = Field(
        description="[x0, y0, x1, y1] in the photo's pixels; null: the whole photo"
    )
    category: str | None = Field(description="the category searched (filter or detected label)")
    label: str | None = Field(default=None, description="the detector's label, if any")
    score: float | None = Field(
        default=None, description="how sure the detector is that the box holds a product"
    )
    label_score: float | None = Field(
        default=None, description="how sure the detector is of its label (given a product)"
    )
    results: list[ResultOut]


class SearchOut(BaseModel):
    queries: list[QueryOut] = Field(description="one result list per detected object")
    took_ms: float
    model: str = Field(description=MODEL)
    index: str = Field(description=INDEX)


class SimilarOut(BaseModel):
    product_id: str
    query_id: str = Field(description=QUERY_ID)
    model: str = Field(description=MODEL)
    index: str = Field(description=INDEX)
    source: Literal["precomputed", "live"] = Field(
        description="the stored list computed at build or refresh time, or a search made now"
    )
    results: list[ResultOut]
    duplicates: list[str] = Field(
        description="this product's other listings (the same picture under other ids, among "
        "the products searched), left out of the results"
    )


class EventsOut(BatchResult):
    """The answer to a batch of which at least one event was logged: `rejected` names the
    others (by their place in the batch), which are not logged and need not be sent again."""


class EventsRefusedOut(ErrorOut):
    """A batch of which nothing was logged (422): every event refused (`no_events_accepted`,
    each named in `rejected`), or a body that is no batch (`invalid_batch`)."""

    rejected: list[EventProblem] = Field(
        default_factory=list, description="the events refused, by their place in the batch"
    )


class ProductOut(BaseModel):
    id: str
    category: str
    title: str
    images: list[str] = Field(description="image URLs, one per view")
    attributes: dict[str, Any]
    price: float | None = Field(description="in the catalog's currency; null: not known")
    brand: str | None = Field(description="null: not known")
    in_stock: bool | None = Field(description="null: not known")
    created: str | None
    updated: str | None


class ProductsOut(BaseModel):
    products: list[ProductOut] = Field(description="this page's products, in id order")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null: this is the last page"
    )
    total: int = Field(
        description="products in the category listed (the whole catalog when none is)"
    )


class DeletedOut(BaseModel):
    id: str
    deleted: Literal[True]


class CategoryOut(BaseModel):
    name: str
    count: int


class CategoriesOut(BaseModel):
    categories: list[CategoryOut]
    total: int


class BrandOut(BaseModel):
    name: str
    count: int


class FacetsOut(BaseModel):
    brands: list[BrandOut] = Field(description="every brand a product has, sorted")
    branded: int = Field(description="products that have a brand")
    priced: int = Field(description="products that have a price")
    price_min: float | None = Field(description="the lowest price; null: no product has one")
    price_max: float | None = Field(description="the highest price; null: no product has one")
    stocked: int = Field(description="products whose stock (in or out) is known")


class SampleOut(BaseModel):
    name: str = Field(description="the file name; `GET /v1/samples/{name}` serves it")
    title: str
    credit: str = Field(description="where the photo comes from and its licence; may be empty")
    image_url: str


class SamplesOut(BaseModel):
    samples: list[SampleOut] = Field(description="sample photos to search with, in page order")


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    model: str = Field(description="the model's name")
    products: int
    detector: bool = Field(description="whether photos are cut into detected objects")
    review: bool = Field(description="whether a triplet review queue is served")
    writes: bool = Field(description="whether write endpoints are enabled (a key is set)")
    recommendations_fresh: bool = Field(description="whether the stored lists postdate writes")


class ReviewDecisionIn(BaseModel):
    status: Literal["approved", "rejected"]
    reviewer: str = Field(min_length=1, max_length=64, pattern=r"^[\w.@\- ]+$")


class ReviewStatsOut(BaseModel):
    pending: int
    approved: int
    rejected: int
    total: int


class TripletMemberOut(BaseModel):
    image_url: str
    image: str = Field(description="the image path relative to the data root")
    bbox: dict[str, float] | None = None
    product: str | None = None


class TripletOut(BaseModel):
    id: int
    kind: str
    category: str | None
    status: str
    reviewer: str | None
    query: TripletMemberOut
    positive: TripletMemberOut
    negative: TripletMemberOut
    notes: dict[str, Any]


class ReviewNextOut(BaseModel):
    triplet: TripletOut | None = Field(description="null when no triplet is pending")
    counts: ReviewStatsOut
