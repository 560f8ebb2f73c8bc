"""API shapes (pydantic, for OpenAPI and request bodies) and the fast JSON response."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.responses import Response

try:  # orjson is about 5x faster than json on result lists; optional
    import orjson

    def dumps(content: Any) -> bytes:
        """Serialise to UTF-8 JSON bytes."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - exercised only without orjson

    def dumps(content: Any) -> bytes:
        """Serialise to UTF-8 JSON bytes."""
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


__all__ = [
    "PRODUCT_ID_PATTERN",
    "CategoriesOut",
    "ErrorOut",
    "FastJSON",
    "ProductOut",
    "QueryOut",
    "ResultOut",
    "ReviewDecisionIn",
    "ReviewNextOut",
    "ReviewStatsOut",
    "SearchOut",
    "SimilarOut",
    "dumps",
]

PRODUCT_ID_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$"  # no leading dot: never "." or ".."
CATEGORY_PATTERN = r"^[A-Za-z0-9_.\- ]{1,64}$"


class FastJSON(Response):
    """A JSON response serialised with orjson when it is installed (routes return these)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)


class ErrorOut(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. unknown_product")
    message: str = Field(description="what went wrong and what to do, for people")


class ResultOut(BaseModel):
    product_id: str
    title: str
    category: str
    score: float = Field(description="inner product of unit vectors (higher is more alike)")
    image_url: str


class QueryOut(BaseModel):
    box: list[float] | None = Field(
        description="[x0, y0, x1, y1] in the photo's pixels; null: whole"
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


class SimilarOut(BaseModel):
    product_id: str
    source: Literal["precomputed", "live"]
    results: list[ResultOut]


class ProductOut(BaseModel):
    id: str
    category: str
    title: str
    images: list[str] = Field(description="image URLs, one per view")
    attributes: dict[str, Any]
    created: str | None
    updated: str | None


class CategoryOut(BaseModel):
    name: str
    count: int


class CategoriesOut(BaseModel):
    categories: list[CategoryOut]
    total: int


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
