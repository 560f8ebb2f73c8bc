"""What the engine answers, as domain objects (no HTTP shapes): search results and similar lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from PIL import Image

from visnet.index.products import Product

__all__ = ["Match", "ObjectResults", "ProductPage", "SearchObject", "SearchResults", "Similar"]


@dataclass(frozen=True)
class SearchObject:
    """One thing to search for in a photo: a detected object's crop, or the whole photo."""

    image: Image.Image
    box: tuple[float, ...] | None = None
    label: str | None = None
    score: float | None = None
    label_score: float | None = None


class Match(NamedTuple):
    """One product in a result list: what a result shows of it, and how alike it is. (A named
    tuple in the order of `CatalogIndex.recommendation_rows`: a stored list becomes 20 of
    these per "more like this" answer, each made at a third of a frozen dataclass's cost.)"""

    product_id: str
    category: str
    title: str
    views: int  # how many images the product has
    score: float
    price: float | None = None
    brand: str | None = None
    in_stock: bool | None = None
    duplicates: tuple[str, ...] = ()  # other listings of the same picture, collapsed into it


@dataclass(frozen=True)
class ObjectResults:
    """What one object of a photo matched: where it is, what the detector said, what was
    searched."""

    box: tuple[float, ...] | None  # None: the whole photo
    label: str | None
    score: float | None
    label_score: float | None
    category: str | None  # the category searched: the request's filter or a trusted label
    matches: list[Match]
    query_image: str | None = None  # the stored crop's id (`visnet.feedback.queries`), if kept


@dataclass(frozen=True)
class SearchResults:
    objects: list[ObjectResults]
    seconds: float


@dataclass(frozen=True)
class Similar:
    """A "more like this" answer: from the stored list, or searched now."""

    product_id: str
    source: Literal["precomputed", "live"]
    matches: tuple[Match, ...]
    duplicates: tuple[str, ...] = ()  # the product's own other listings, left out of matches


@dataclass(frozen=True)
class ProductPage:
    """One page of the catalog listing, in id order."""

    products: tuple[Product, ...]
    next_cursor: str | None  # the last product's id when more follow; None on the last page
    total: int  # products in the category listed (the whole catalog when none is)
