"""One picture under several ids shows once, and a shop's filters, against a real server.

The catalog is the example catalog (`examples/catalog/`) with a price, a brand and a stock flag
on every product, and hat-01's picture listed under three ids (HAT-01 and two re-listings).
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from service_helpers import build_tiny_catalog, running_server, service_settings

from visnet.embed.registry import create_embedder
from visnet.index.build import build_index
from visnet.service import create_app
from visnet.service.schemas import ProductOut, SearchOut, SimilarOut

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog"
KEY = "listings-key-0123456789"
COPIES = ["HAT-01", "HAT-01-B", "HAT-01-C"]  # one picture, three listings
HAT = EXAMPLE / "images" / "hats" / "hat-01.jpg"


@dataclass
class Live:
    client: httpx.Client
    app: Any
    rows: dict[str, dict[str, Any]]  # product id -> its catalog row, as the test wrote it


def _rows() -> list[dict[str, Any]]:
    with (EXAMPLE / "products.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row.update(price=f"{10 + 5 * i}", brand="ABC"[i % 3], in_stock=["yes", "no"][i % 4 == 3])
    rows[5]["brand"] = rows[20]["brand"] = "Rare"
    first = rows[0]
    assert first["id"] == "HAT-01" and first["image"].endswith("hat-01.jpg")
    rows.insert(1, {**first, "id": "HAT-01-B", "price": "8", "in_stock": "no"})  # re-listings
    rows.insert(2, {**first, "id": "HAT-01-C", "price": "9", "brand": "Rare"})
    return rows


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("listings")
    shutil.copytree(EXAMPLE / "images", folder / "images")
    rows = _rows()
    with (folder / "products.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    build_index(folder / "products.csv", create_embedder("colour-histogram"), folder / "index", 0)
    settings = service_settings(index=folder / "index", model="colour-histogram", api_key=KEY)
    app = create_app(settings)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Live(client, app, {row["id"]: row for row in rows})


def _search(live: Live, data: bytes, **fields: Any) -> list[dict[str, Any]]:
    response = live.client.post("/v1/search", files={"image": ("q.jpg", data)}, data=fields)
    assert response.status_code == 200, response.text
    SearchOut.model_validate_json(response.content, strict=True)
    return response.json()["queries"][0]["results"]


def _similar(live: Live, pid: str, **params: Any) -> dict[str, Any]:
    response = live.client.get(f"/v1/products/{pid}/similar", params=params)
    assert response.status_code == 200, response.text
    SimilarOut.model_validate_json(response.content, strict=True)
    return response.json()


def _ids(results: list[dict[str, Any]]) -> list[str]:
    return [r["product_id"] for r in results]


# ---- one picture, several listings -----------------------------------------------------------


def test_search_shows_one_picture_once_with_its_other_listings(live: Live) -> None:
    results = _search(live, HAT.read_bytes(), category="hats", k="6")
    assert results[0]["product_id"] == "HAT-01" and results[0]["score"] == pytest.approx(1.0)
    assert results[0]["duplicates"] == ["HAT-01-B", "HAT-01-C"]
    # six results from eight hats: the colour variants HAT-02 and HAT-03 are other products
    assert sorted(_ids(results)) == [f"HAT-0{i}" for i in range(1, 7)]
    assert all(r["duplicates"] == [] for r in results[1:])


def test_look_alikes_show_it_once_and_a_listing_names_its_copies(live: Live) -> None:
    engine = live.app.state.engine
    for pid in ("HAT-02", "HAT-01-B"):
        stored = _similar(live, pid, k=4)
        fresh = engine.live_similar(pid, 4, True)
        assert stored["source"] == "precomputed" and fresh.source == "live"
        assert [(r["product_id"], r["duplicates"]) for r in stored["results"]] == [
            (m.product_id, list(m.duplicates)) for m in fresh.matches
        ]
        assert stored["duplicates"] == list(fresh.duplicates)
    variant = _similar(live, "HAT-02", k=4)
    assert variant["duplicates"] == [] and "HAT-03" in _ids(variant["results"])
    [group] = [r for r in variant["results"] if set(COPIES) & {r["product_id"], *r["duplicates"]}]
    assert [group["product_id"], *group["duplicates"]] == COPIES  # once, the others listed
    own = _similar(live, "HAT-01-B", k=4)
    assert own["duplicates"] == ["HAT-01", "HAT-01-C"]
    assert not set(COPIES) & set(_ids(own["results"])) and len(own["results"]) == 4


def test_a_re_listing_uploaded_live_joins_its_picture(live: Live) -> None:
    image = Image.open(HAT).convert("RGB")
    image = image.resize((image.width * 4 // 5, image.height * 4 // 5))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=60)  # re-encoded, rescaled
    put = live.client.post(
        "/v1/products",
        data={"id": "HAT-01-D", "category": "hats", "title": "Adventurer hat (resold)"},
        files=[("images", ("v.jpg", out.getvalue()))],
        headers={"X-API-Key": KEY},
    )
    assert put.status_code == 201, put.text
    try:
        results = _search(live, HAT.read_bytes(), category="hats", k="3")
        assert results[0]["duplicates"] == ["HAT-01-B", "HAT-01-C", "HAT-01-D"]
        assert len(results) == 3
        assert "HAT-01-D" in _similar(live, "HAT-01", k=3)["duplicates"]
    finally:
        live.client.delete("/v1/products/HAT-01-D", headers={"X-API-Key": KEY})


# ---- filters -----------------------------------------------------------------------------------


def _passes(row: dict[str, Any], params: dict[str, Any]) -> bool:
    price, brands = float(row["price"]), {b.lower() for b in params.get("brand", [])}
    return (
        price >= float(params.get("min_price", 0))
        and price <= float(params.get("max_price", 1e9))
        and (not brands or row["brand"].lower() in brands)
        and (
            "in_stock" not in params or (row["in_stock"] == "yes") == (params["in_stock"] == "true")
        )
    )


@pytest.mark.parametrize(
    "params",
    [
        {"brand": ["rare"]},  # 3 products of 36
        {"min_price": "50", "max_price": "90.5", "in_stock": "true"},
        {"brand": ["A", "Rare"], "in_stock": "false"},
    ],
    ids=["rare-brand", "price-and-stock", "brands-out-of-stock"],
)
def test_search_and_look_alikes_come_back_all_in_the_filter(
    live: Live, params: dict[str, Any]
) -> None:
    passing = {pid for pid, row in live.rows.items() if _passes(row, params)}
    assert 0 < len(passing) < len(live.rows) / 3
    found = _search(live, HAT.read_bytes(), k="20", **params)
    listed = {pid for r in found for pid in (r["product_id"], *r["duplicates"])}
    assert listed == passing  # every product that passes, each once, and no other
    for r in found:
        row = live.rows[r["product_id"]]
        assert (r["price"], r["brand"], r["in_stock"]) == (
            float(row["price"]), row["brand"], row["in_stock"] == "yes",
        )  # fmt: skip
    alike = _similar(live, "SHOE-01", k=3, same_category="false", **params)
    assert alike["source"] == "live" and len(alike["results"]) == min(3, len(passing - {"SHOE-01"}))
    assert set(_ids(alike["results"])) <= passing


def test_bad_filters_are_refused_and_the_schema_documents_them(live: Live) -> None:
    for params in (
        {"min_price": "30", "max_price": "20"},
        {"min_price": "-1"},
        {"max_price": "1e12"},
        {"brand": "x" * 101},
        {"in_stock": "perhaps"},
    ):
        response = live.client.get("/v1/products/HAT-01/similar", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"] == "invalid_request"
    response = live.client.post(
        "/v1/search", files={"image": ("q.jpg", HAT.read_bytes())}, data={"min_price": "-5"}
    )
    assert response.status_code == 422
    spec = live.client.get("/openapi.json").json()
    similar = {
        p["name"]: p["schema"]
        for p in spec["paths"]["/v1/products/{product_id}/similar"]["get"]["parameters"]
    }
    assert (
        similar["min_price"]["anyOf"][0]["minimum"],
        similar["max_price"]["anyOf"][0]["maximum"],
    ) == (0, 1e9)
    assert similar["brand"]["items"]["maxLength"] == 100 and similar["brand"]["maxItems"] == 20
    filters = spec["components"]["schemas"]["FiltersIn"]["properties"]
    assert set(filters) == {"min_price", "max_price", "brand", "in_stock"}
    result = spec["components"]["schemas"]["ResultOut"]["properties"]
    assert {"price", "brand", "in_stock", "duplicates"} <= set(result)


def test_products_carry_their_fields_and_brands_are_listed(live: Live) -> None:
    product = live.client.get("/v1/products/HAT-01-C")
    ProductOut.model_validate_json(product.content, strict=True)
    body = product.json()
    assert (body["price"], body["brand"], body["in_stock"]) == (9.0, "Rare", True)
    assert body["attributes"] == {"colour": "original"}
    facets = live.client.get("/v1/facets").json()
    assert {b["name"]: b["count"] for b in facets["brands"]} == {
        name: sum(row["brand"] == name for row in live.rows.values()) for name in "ABC"
    } | {"Rare": 3}
    assert facets["branded"] == len(live.rows)
    prices = [float(row["price"]) for row in live.rows.values()]
    assert facets["priced"] == facets["stocked"] == len(live.rows)
    assert (facets["price_min"], facets["price_max"]) == (min(prices), max(prices))


def test_an_upload_sets_price_brand_and_stock(live: Live) -> None:
    headers = {"X-API-Key": KEY}
    files = [("images", ("v.jpg", (EXAMPLE / "images" / "bags" / "bag-01.jpg").read_bytes()))]
    fields = {"id": "BAG-99", "category": "bags", "price": "1234.5", "brand": " Zed ",
              "in_stock": "true"}  # fmt: skip
    put = live.client.post("/v1/products", data=fields, files=files, headers=headers)
    assert put.status_code == 201, put.text
    try:
        assert (put.json()["price"], put.json()["brand"], put.json()["in_stock"]) == (
            1234.5, "Zed", True,
        )  # fmt: skip
        found = _search(live, files[0][1][1], k="5", brand="zed")
        assert _ids(found) == ["BAG-99"]
        bad = live.client.post(
            "/v1/products", data={**fields, "price": "-3"}, files=files, headers=headers
        )
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    finally:
        live.client.delete("/v1/products/BAG-99", headers=headers)


def test_lists_stored_with_another_threshold_are_answered_live(tmp_path: Path) -> None:
    _, index = build_tiny_catalog(tmp_path)
    settings = service_settings(
        index=index, model="colour-histogram", duplicate_threshold=0.5, refresh_after_s=0
    )
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/readyz").json()["recommendations_fresh"] is False
        assert client.get("/v1/products/1/similar", params={"k": 3}).json()["source"] == "live"
