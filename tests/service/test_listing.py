"""`GET /v1/products`: the catalog a page at a time (keyset paging by id) against a real server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import build_tiny_catalog, running_server, service_settings

from visnet.index.catalog_index import CatalogIndex
from visnet.index.products import Product, ProductStore
from visnet.service import create_app
from visnet.service.schemas import ProductsOut

KEY = "listing-key-0123456789"
# ids whose id order is byte order ("B" < "a", "a-1" < "a.1" < "a1" < "a_1"), in a fresh category
TRICKY = ["a", "B", "a-1", "a.1", "a_1", "Z9", "z", "0", "a1", "A"]


@dataclass
class Live:
    client: httpx.Client
    naive: list[Product]  # every product as the store lists them, read before serving


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    _, index_dir = build_tiny_catalog(tmp_path_factory.mktemp("listing"))
    manifest = json.loads((index_dir / "manifest.json").read_text())
    index = CatalogIndex.open(index_dir, model_fingerprint=manifest["model_fingerprint"])
    try:
        vector = np.random.default_rng(0).normal(size=(1, manifest["embedding_dim"]))
        index.upsert_many(
            (Product(pid, "odd ids", f"title {pid}", ("photos/none.jpg",) * (i % 3)), vector)
            for i, pid in enumerate(TRICKY)
        )
    finally:
        index.close()
    store = ProductStore(index_dir / "products.sqlite")
    try:
        naive = store.list_products()
    finally:
        store.close()
    settings = service_settings(index=index_dir, model="colour-histogram", api_key=KEY)
    app = create_app(settings)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Live(client, naive)


def _page(live: Live, **params: Any) -> dict[str, Any]:
    response = live.client.get("/v1/products", params=params)
    assert response.status_code == 200, response.text
    ProductsOut.model_validate(response.json())  # exactly the documented shape
    return response.json()


def _all(live: Live, **params: Any) -> tuple[list[dict[str, Any]], int]:
    seen: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        page = _page(live, **params, **({"cursor": cursor} if cursor else {}))
        seen += page["products"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, pages
        assert page["products"] and cursor == page["products"][-1]["id"]
        assert pages < 1000


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
def test_paging_lists_each_product_once_in_id_order_as_the_store_does(
    live: Live, limit: int
) -> None:
    seen, pages = _all(live, limit=limit)
    ids = [p["id"] for p in seen]
    assert ids == [p.id for p in live.naive]
    assert len(set(ids)) == len(ids) and set(TRICKY) <= set(ids)
    assert pages == max(1, -(-len(ids) // limit))  # no empty page at the end
    assert all(len(p) <= limit for p in [seen[i : i + limit] for i in range(0, len(seen), limit)])
    assert _page(live, limit=limit)["total"] == len(live.naive)


def test_a_listed_product_is_what_the_product_endpoint_answers(live: Live) -> None:
    seen, _ = _all(live, limit=100)
    for product in seen:
        assert product == live.client.get(f"/v1/products/{product['id']}").json()
    by_id = {p["id"]: p for p in seen}
    assert by_id["a-1"]["images"] == ["/v1/images/a-1/0", "/v1/images/a-1/1"]
    assert by_id["a"]["images"] == [] and by_id["a"]["title"] == "title a"


def test_the_default_page_and_the_first_page_of_a_category(live: Live) -> None:
    page = _page(live)
    assert len(page["products"]) == min(24, len(live.naive))
    odd = _page(live, category="odd ids", limit=4)
    assert [p["id"] for p in odd["products"]] == sorted(TRICKY)[:4]
    assert odd["next_cursor"] == sorted(TRICKY)[3] and odd["total"] == len(TRICKY)


def test_the_category_filter_pages_through_that_category_only(live: Live) -> None:
    categories = live.client.get("/v1/categories").json()["categories"]
    assert len(categories) >= 2
    for entry in categories:
        seen, _ = _all(live, category=entry["name"], limit=3)
        want = [p.id for p in live.naive if p.category == entry["name"]]
        assert [p["id"] for p in seen] == want and len(want) == entry["count"]
        assert {p["category"] for p in seen} == {entry["name"]}
        assert _page(live, category=entry["name"])["total"] == entry["count"]


def test_an_unknown_category_is_an_empty_last_page(live: Live) -> None:
    assert _page(live, category="no such category") == {
        "products": [],
        "next_cursor": None,
        "total": 0,
    }


def test_a_cursor_past_the_end_or_between_ids_pages_on_from_there(live: Live) -> None:
    last = live.naive[-1].id
    assert _page(live, cursor=last)["products"] == []
    assert _page(live, cursor=last)["next_cursor"] is None
    after = [p["id"] for p in _page(live, cursor="a0", limit=100)["products"]]
    assert after == [p.id for p in live.naive if p.id > "a0"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "ten"},
        {"cursor": "../etc"},
        {"cursor": "a/b"},
        {"cursor": ".hidden"},
        {"cursor": "x" * 65},
        {"cursor": ""},
        {"category": "a/b"},
        {"category": "x" * 65},
    ],
)
def test_a_malformed_cursor_limit_or_category_is_the_usual_422(
    live: Live, params: dict[str, Any]
) -> None:
    response = live.client.get("/v1/products", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and set(body) == {"error", "message"}
    assert next(iter(params)) in body["message"]


def test_a_write_is_listed_at_once_and_reads_need_no_key(live: Live) -> None:
    assert "X-API-Key" not in live.client.headers  # every read above went without a key
    image = io.BytesIO()
    Image.new("RGB", (32, 32), "teal").save(image, format="PNG")
    created = live.client.post(
        "/v1/products",
        data={"id": "zz-new", "category": "odd ids", "title": "new"},
        files={"images": ("new.png", image.getvalue())},
        headers={"X-API-Key": KEY},
    )
    assert created.status_code == 201, created.text
    try:
        odd = _page(live, category="odd ids", limit=100)
        assert odd["products"][-1] == created.json() and odd["total"] == len(TRICKY) + 1
    finally:
        deleted = live.client.delete("/v1/products/zz-new", headers={"X-API-Key": KEY})
        assert deleted.status_code == 200, deleted.text
    assert _page(live, category="odd ids")["total"] == len(TRICKY)


def test_the_listing_is_documented_with_its_bounds(live: Live) -> None:
    operation = live.client.get("/openapi.json").json()["paths"]["/v1/products"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] == 100
    assert "pattern" in json.dumps(params["cursor"]) and "pattern" in json.dumps(params["category"])
    assert "security" not in operation
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ProductsOut"}
    assert {"422", "503"} <= set(operation["responses"])
