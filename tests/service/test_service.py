"""The HTTP service against a real uvicorn server: happy paths, every bad input, auth, writes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import (
    build_tiny_catalog,
    free_port,
    running_server,
    seed_review_queue,
    service_settings,
)

from visnet.detect.detector import Detections
from visnet.index.catalog_index import CatalogIndex
from visnet.index.products import Product
from visnet.service import create_app, load_settings

KEY = "test-key-0123456789"
MAX_BYTES = 256 * 1024
MAX_PIXELS = 1_000_000


@dataclass
class Live:
    url: str
    client: httpx.Client
    root: Path
    index: Path
    app: object


def _add_escaping_products(index_dir: Path, root: Path) -> None:
    """Products whose stored image refs point outside the catalog root (must never be served)."""
    outside = root.parent / "outside.jpg"
    Image.new("RGB", (8, 8), "red").save(outside)
    (root / "photos" / "link.jpg").symlink_to(outside)
    fingerprint = json.loads((index_dir / "manifest.json").read_text())
    index = CatalogIndex.open(index_dir, model_fingerprint=fingerprint["model_fingerprint"])
    try:
        rng = np.random.default_rng(0)
        dim = index.manifest["embedding_dim"]
        for pid, ref in (("escape", "../outside.jpg"), ("linked", "photos/link.jpg")):
            index.upsert(Product(pid, "hidden", pid, (ref,)), rng.normal(size=(1, dim)))
    finally:
        index.close()


@contextmanager
def _serve(index: Path, root: Path, **changes: object) -> Iterator[Live]:
    settings = service_settings(
        index=index,
        model="colour-histogram",
        max_upload_bytes=MAX_BYTES,
        max_pixels=MAX_PIXELS,
        **changes,
    )
    app = create_app(settings)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Live(url, client, root, index, app)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("service")
    root, index = build_tiny_catalog(folder)
    shutil.copytree(index, folder / "index-no-key")  # one process per index: a copy for server 2
    _add_escaping_products(index, root)
    return root, index


@pytest.fixture(scope="module")
def live(catalog: tuple[Path, Path]) -> Iterator[Live]:
    root, index = catalog
    queue = seed_review_queue(root, index.parent / "review.sqlite")
    with _serve(index, root, api_key=KEY, review_queue=queue) as server:
        yield server


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _noise(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return _png(Image.fromarray(pixels))


def _search(live: Live, data: bytes, **fields: str) -> httpx.Response:
    return live.client.post("/v1/search", files={"image": ("q.png", data)}, data=fields)


def _ids(response: httpx.Response) -> list[str]:
    return [r["product_id"] for q in response.json()["queries"] for r in q["results"]]


# ---- happy paths -----------------------------------------------------------------------------


def test_search_finds_the_exact_catalog_image_first(live: Live) -> None:
    image = (live.root / "photos" / "1.jpg").read_bytes()
    response = _search(live, image, k="5")
    assert response.status_code == 200
    body = response.json()
    assert body["took_ms"] >= 0 and len(body["queries"]) == 1
    query = body["queries"][0]
    assert query["box"] is None and len(query["results"]) == 5
    top = query["results"][0]
    assert top["product_id"] == "1" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["title"] and top["category"] == "circle" and top["image_url"] == "/v1/images/1/0"


def test_search_category_filter(live: Live) -> None:
    image = (live.root / "photos" / "1.jpg").read_bytes()
    response = _search(live, image, category="square", k="3")
    results = response.json()["queries"][0]["results"]
    assert response.json()["queries"][0]["category"] == "square"
    assert results and all(r["category"] == "square" for r in results)


def test_similar_excludes_self_and_ranks(live: Live) -> None:
    for k in (2, 20):
        response = live.client.get("/v1/products/1/similar", params={"k": k})
        assert response.status_code == 200
        body = response.json()
        ids = [r["product_id"] for r in body["results"]]
        assert "1" not in ids and ids
        assert all(r["category"] == "circle" for r in body["results"])
        scores = [r["score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)
    across = live.client.get("/v1/products/1/similar", params={"same_category": "false"})
    assert {r["category"] for r in across.json()["results"]} - {"circle"}


def test_precomputed_answers_equal_live_ones(live: Live) -> None:
    engine = live.app.state.engine  # type: ignore[attr-defined]
    for pid in ("1", "2", "5"):
        stored = engine.precomputed_similar(pid, 3, True)
        assert stored is not None, "the tiny index precomputes every list"
        served = live.client.get(f"/v1/products/{pid}/similar", params={"k": 3}).json()
        assert served["source"] == "precomputed"
        fresh = engine.live_similar(pid, 3, True)
        assert fresh.source == "live"
        assert [r["product_id"] for r in served["results"]] == [m.product_id for m in fresh.matches]
        for a, b in zip(served["results"], fresh.matches, strict=True):
            assert (a["title"], a["category"]) == (b.title, b.category)
            assert a["image_url"] == f"/v1/images/{b.product_id}/0"
            assert a["score"] == pytest.approx(b.score, abs=1e-4)
    assert engine.precomputed_similar("1", 3, False) is None  # across categories: live only


def test_get_product_image_and_categories(live: Live) -> None:
    product = live.client.get("/v1/products/1").json()
    assert product["id"] == "1" and product["category"] == "circle"
    assert product["images"] == ["/v1/images/1/0", "/v1/images/1/1"]
    image = live.client.get(product["images"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == (live.root / "photos" / "1.jpg").read_bytes()
    cats = live.client.get("/v1/categories").json()
    assert {c["name"]: c["count"] for c in cats["categories"]} == {
        "circle": 4,
        "hidden": 2,
        "square": 4,
        "triangle": 4,
    }


def test_detected_objects_give_one_result_list_each(live: Live) -> None:
    class FakeDetector:
        def __init__(self, found: Detections) -> None:
            self.found = found

        def detect(self, images: list) -> list[Detections]:
            return [self.found for _ in images]

    two = Detections(
        np.array([[0, 0, 32, 32], [30, 30, 64, 64]], np.float32),
        ["circle", "unknown-kind"],
        np.array([0.9, 0.8], np.float32),
    )
    engine = live.app.state.engine  # type: ignore[attr-defined]
    image = (live.root / "photos" / "1.jpg").read_bytes()
    settings = engine.settings
    try:
        engine.detector = FakeDetector(two)
        # the nearest catalog product names each box's category, whatever the detector says
        queries = _search(live, image, k="3").json()["queries"]
        assert [q["category"] for q in queries] == ["circle", "circle"]
        assert [q["label"] for q in queries] == ["circle", "unknown-kind"]
        # without it (or when nothing is similar enough), the detector's label, if trusted
        engine.settings = settings.model_copy(update={"neighbour_category_score": None})
        queries = _search(live, image, k="3").json()["queries"]
        assert [q["box"] for q in queries] == [[0, 0, 32, 32], [30, 30, 64, 64]]
        assert [q["category"] for q in queries] == ["circle", None]  # known labels filter
        assert all(r["category"] == "circle" for r in queries[0]["results"])
        doubtful = Detections(two.boxes[:1], ["circle"], np.array([0.3], np.float32))
        engine.detector = FakeDetector(doubtful)
        (query,) = _search(live, image, k="20").json()["queries"]
        assert query["box"] == [0, 0, 32, 32] and query["label"] == "circle"  # the best box...
        assert query["category"] is None  # ...but its doubtful label does not filter
        assert {r["category"] for r in query["results"]} != {"circle"}
        unsure = Detections(two.boxes[:1], ["circle"], np.array([0.9], np.float32), np.array([0.4]))
        engine.detector = FakeDetector(unsure)
        (query,) = _search(live, image, k="20").json()["queries"]
        assert query["score"] == 0.9 and query["category"] is None  # a product, category unsure
        engine.detector = FakeDetector(Detections.empty())
        queries = _search(live, image, k="3").json()["queries"]
        assert len(queries) == 1 and queries[0]["box"] is None  # the whole-photo fallback
        assert queries[0]["category"] is None
    finally:
        engine.detector, engine.settings = None, settings


# ---- bad input -------------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png(Image.fromarray(pixels), "JPEG")
    return data[: len(data) * 2 // 3]  # cut inside the scan, after the headers


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: b"", 400, "not_an_image"),
        (lambda: b"just some text, not a picture", 400, "not_an_image"),
        (_truncated_jpeg, 400, "truncated_image"),
        (lambda: _png(Image.new("RGB", (1100, 1000))), 413, "image_too_large"),
        (lambda: _png(Image.new("RGB", (16, 16)), "PPM"), 415, "unsupported_image"),
        (lambda: os.urandom(MAX_BYTES + 1024), 413, "upload_too_large"),
    ],
    ids=["empty", "text", "truncated", "too-many-pixels", "unsupported", "too-many-bytes"],
)
def test_bad_images_give_json_errors(live: Live, make, status: int, code: str) -> None:
    response = _search(live, make())
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["message"]
    assert live.client.get("/healthz").json() == {"status": "ok"}  # still serving


def test_a_chunked_body_over_the_cap_is_refused(live: Live) -> None:
    boundary = "visnet-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        yield head
        for _ in range(MAX_BYTES // 8192 + 2):
            yield os.urandom(8192)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = live.client.post("/v1/search", content=body(), headers=headers)
    assert response.status_code == 413 and response.json()["error"] == "upload_too_large"
    assert live.client.get("/healthz").status_code == 200


def test_bad_requests_are_rejected_with_json(live: Live) -> None:
    cases = [
        ("GET", "/v1/products/bad%20id", 422, "invalid_request"),
        ("GET", "/v1/products/" + "a" * 65, 422, "invalid_request"),
        ("GET", "/v1/products/.hidden", 422, "invalid_request"),
        ("GET", "/v1/products/nope", 404, "unknown_product"),
        ("GET", "/v1/products/nope/similar", 404, "unknown_product"),
        ("GET", "/v1/products/1/similar?k=0", 422, "invalid_request"),
        ("GET", "/v1/products/1/similar?k=1000", 422, "invalid_request"),
        ("GET", "/v1/images/1/9", 404, "image_not_found"),
        ("GET", "/v1/images/1/-1", 422, "invalid_request"),
        ("GET", "/v1/images/escape/0", 404, "image_not_found"),
        ("GET", "/v1/images/linked/0", 404, "image_not_found"),
        ("GET", "/v1/nothing-here", 404, "not_found"),
        ("PUT", "/v1/search", 405, "method_not_allowed"),
        ("POST", "/v1/search", 422, "invalid_request"),
    ]
    for method, path, status, code in cases:
        response = live.client.request(method, path)
        assert (response.status_code, response.json()["error"]) == (status, code), path


# ---- auth and writes -------------------------------------------------------------------------


def _put(live: Live, pid: str, images: list[bytes], key: str | None = KEY, **extra: str):
    headers = {"X-API-Key": key} if key else {}
    files = [("images", (f"v{i}.png", data)) for i, data in enumerate(images)]
    fields = {"id": pid, "category": extra.get("category", "circle"), "title": f"title {pid}"}
    return live.client.post("/v1/products", data=fields, files=files, headers=headers)


def test_writes_need_the_key(live: Live) -> None:
    for key, status, code in (
        (None, 401, "unauthorized"),
        ("wrong-key-000000", 403, "wrong_api_key"),
    ):
        put = _put(live, "x1", [_noise(1)], key=key)
        assert (put.status_code, put.json()["error"]) == (status, code)
        headers = {"X-API-Key": key} if key else {}
        response = live.client.delete("/v1/products/1", headers=headers)
        assert (response.status_code, response.json()["error"]) == (status, code)
    assert live.client.get("/v1/products/1").status_code == 200
    assert live.client.get("/v1/products/x1").status_code == 404


def test_the_key_is_checked_before_the_body_is_read(live: Live) -> None:
    """A keyless upload is answered 401 at its headers: the server reads no byte of its body."""
    port = int(live.url.rsplit(":", 1)[1])
    head = (
        "POST /v1/products HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {MAX_BYTES // 2}\r\n\r\n"  # promised, never sent
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            chunk = conn.recv(4096)  # a server waiting for the body would time out here
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"401", reply
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "unauthorized"


def test_the_key_check_never_calls_receive(live: Live) -> None:
    """At the ASGI level: a keyless write is refused without one `receive` call."""
    received: list[object] = []
    sent: list[dict] = []

    async def receive() -> dict:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/products",
        "raw_path": b"/v1/products",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(live.app(scope, receive, send))  # type: ignore[operator]
    assert sent[0]["status"] == 401 and not received


def test_writes_are_disabled_without_a_configured_key(catalog: tuple[Path, Path]) -> None:
    root, index = catalog
    with _serve(index.parent / "index-no-key", root) as server:
        response = _put(server, "x1", [_noise(1)], key=KEY)
        assert response.status_code == 403 and response.json()["error"] == "writes_disabled"
        assert server.client.delete("/v1/products/1", headers={"X-API-Key": KEY}).status_code == 403
        assert server.client.get("/readyz").json()["writes"] is False


def test_an_ingested_product_is_found_by_the_next_search_and_a_deleted_one_is_gone(
    live: Live,
) -> None:
    views = [_noise(7), _noise(8)]
    created = _put(live, "new-1", views, category="circle")
    assert created.status_code == 201, created.text
    assert created.json()["images"] == ["/v1/images/new-1/0", "/v1/images/new-1/1"]
    assert _ids(_search(live, views[1], k="3"))[0] == "new-1"
    image = live.client.get("/v1/images/new-1/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert _put(live, "new-1", [_noise(9)]).status_code == 200  # replaced
    assert _ids(_search(live, _noise(9), k="3"))[0] == "new-1"
    assert live.client.get("/v1/products/new-1").json()["images"] == ["/v1/images/new-1/0"]
    assert live.client.delete("/v1/products/new-1", headers={"X-API-Key": KEY}).json()["deleted"]
    gone = live.client.get("/v1/products/new-1")
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_product"
    assert "new-1" not in _ids(_search(live, _noise(9), k="20"))
    assert live.client.get("/v1/images/new-1/0").status_code == 404
    assert not (live.index / "uploads" / "new-1").exists()
    again = live.client.delete("/v1/products/new-1", headers={"X-API-Key": KEY})
    assert again.status_code == 404


def test_similar_answers_live_after_a_write(live: Live) -> None:
    twin = (live.root / "photos" / "1.jpg").read_bytes()  # a copy of product 1's first view
    assert _put(live, "twin-1", [twin]).status_code == 201
    try:
        body = live.client.get("/v1/products/1/similar", params={"k": 3}).json()
        assert body["source"] == "live" and len(body["results"]) == 3
        # the same picture under another id: product 1's other listing, not a look-alike
        assert body["duplicates"] == ["twin-1"]
        assert "twin-1" not in [r["product_id"] for r in body["results"]]
    finally:
        live.client.delete("/v1/products/twin-1", headers={"X-API-Key": KEY})


def test_bad_product_uploads_write_nothing(live: Live) -> None:
    bad = _put(live, "half-1", [_noise(3), b"not an image"])
    assert bad.status_code == 400 and bad.json()["error"] == "not_an_image"
    assert live.client.get("/v1/products/half-1").status_code == 404
    assert _put(live, "../x", [_noise(3)]).status_code == 422
    assert _put(live, "ok-1", [_noise(3)], category="bad/category").status_code == 422


# ---- review ----------------------------------------------------------------------------------


def test_review_next_decide_and_images(live: Live) -> None:
    stats = live.client.get("/v1/review/stats").json()
    assert stats["pending"] == stats["total"] == 3
    triplet = live.client.get("/v1/review/next").json()["triplet"]
    assert triplet["query"]["bbox"] and triplet["positive"]["product"]
    for role in ("query", "positive", "negative"):
        image = live.client.get(triplet[role]["image_url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    path = f"/v1/review/{triplet['id']}"
    decision = {"status": "approved", "reviewer": "tester"}
    assert live.client.post(path, json=decision).status_code == 401
    bad = live.client.post(
        path, json={"status": "maybe", "reviewer": "x"}, headers={"X-API-Key": KEY}
    )
    assert bad.status_code == 422
    done = live.client.post(path, json=decision, headers={"X-API-Key": KEY}).json()
    assert done["triplet"]["status"] == "approved" and done["counts"]["approved"] == 1
    following = live.client.get("/v1/review/next", params={"after": triplet["id"]}).json()
    assert following["triplet"]["id"] != triplet["id"]
    missing = live.client.post("/v1/review/999", json=decision, headers={"X-API-Key": KEY})
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_triplet"
    assert live.client.get("/v1/review/999/images/query").status_code == 404
    assert live.client.get(f"{path}/images/secret").status_code == 422


# ---- operations ------------------------------------------------------------------------------


def test_health_ready_metrics_openapi_and_page(live: Live) -> None:
    assert live.client.get("/healthz").json() == {"status": "ok"}
    ready = live.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "colour-histogram"
    assert ready["products"] >= 14 and ready["review"] is True
    _search(live, b"")
    text = live.client.get("/metrics").text
    assert 'visnet_http_requests_total{method="POST",route="/v1/search",status="400"}' in text
    assert "visnet_http_request_duration_seconds_bucket" in text
    assert "visnet_index_products" in text
    spec = live.client.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/products/{product_id}/similar", "/v1/review/next"):
        assert path in spec["paths"]
    page = live.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert live.client.get("/static/app.js").status_code == 200


def test_openapi_documents_the_real_shapes_and_bounds(live: Live) -> None:
    spec = live.client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                json_schema = response.get("content", {}).get("application/json", {}).get("schema")
                if json_schema is not None:  # every JSON answer, errors too, is a named model
                    assert "$ref" in json_schema, (method, path, status, json_schema)
    similar = spec["paths"]["/v1/products/{product_id}/similar"]["get"]
    k = next(p for p in similar["parameters"] if p["name"] == "k")["schema"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, 100, 20)
    refs = {
        s: r["content"]["application/json"]["schema"]["$ref"]
        for s, r in similar["responses"].items()
    }
    assert refs["200"].endswith("/SimilarOut") and refs["404"].endswith("/ErrorOut")
    search_form = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    form_ref = search_form["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    form_k = spec["components"]["schemas"][form_ref]["properties"]["k"]
    assert (form_k["minimum"], form_k["maximum"]) == (1, 100)
    for path, method in (("/v1/products", "post"), ("/v1/products/{product_id}", "delete")):
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"ApiKey": []}]
        assert {"401", "403"} <= set(operation["responses"])
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"],
    }


def _valid(model: type, response: httpx.Response) -> dict:
    """The body, checked to be exactly a `model` (strict types, no key more or less)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert model.model_validate_json(response.content, strict=True).model_dump() == body
    return body


def test_similar_bytes_are_exactly_the_documented_model(live: Live) -> None:
    """/similar is serialised without pydantic (the hot path): every source must still give
    exactly a `SimilarOut`."""
    from visnet.service.schemas import SimilarOut

    assert live.app.state.engine.recommendations.refresh()  # type: ignore[attr-defined]
    sources = []
    for params in ({"k": 3}, {"k": 3}, {"k": 3, "same_category": "false"}, {"k": 50}):
        sources.append(_valid(SimilarOut, live.client.get("/v1/products/5/similar", params=params)))
    assert [s["source"] for s in sources] == ["precomputed", "precomputed", "live", "live"]
    first, second = ({k: v for k, v in s.items() if k != "query_id"} for s in sources[:2])
    assert first == second  # the second from the answer cache
    assert len({s["query_id"] for s in sources}) == len(sources)  # each answer is a new list
    assert {s["model"] for s in sources} == {live.app.state.engine.model_token}  # type: ignore[attr-defined]
    metrics = live.client.get("/metrics").text
    assert 'visnet_similar_responses_total{source="cache"}' in metrics


def test_similar_fast_path_answers_as_the_route_does(live: Live) -> None:
    """The plain cached or stored /similar is answered before FastAPI's routing
    (`routes.SimilarFastPath`); anything else goes on to the route, with the same answers."""
    from visnet.service.routes import SimilarFastPath

    assert live.app.state.engine.recommendations.refresh()  # type: ignore[attr-defined]
    fast = SimilarFastPath(app=None)

    def answered_fast(path: str, query: bytes = b"") -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "query_string": query}
        return fast._answer({**scope, "app": live.app}) is not None

    assert answered_fast("/v1/products/5/similar", b"k=3")
    assert answered_fast("/v1/products/5/similar", b"k=3&same_category=1")
    for path, query in [
        ("/v1/products/5/similar", b"k=3&same_category=yes"),  # pydantic's true too: the route
        ("/v1/products/5/similar", b"k=3&k=4"),
        ("/v1/products/5/similar", b"k=0"),
        ("/v1/products/5/similar", b"k=3&in_stock=true"),  # a filter: live, by the route
        ("/v1/products/no-such/similar", b"k=3"),  # no list: the route's 404
        ("/v1/products/5/similar/", b""),
    ]:
        assert not answered_fast(path, query), (path, query)

    def body(params: dict[str, str]) -> dict[str, object]:
        response = live.client.get("/v1/products/5/similar", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return {k: v for k, v in response.json().items() if k != "query_id"}

    label = 'visnet_http_requests_total{method="GET",route="/v1/products/{product_id}/similar"'

    def counted() -> float:
        lines = live.client.get("/metrics").text.splitlines()
        return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(label))

    before = counted()
    assert body({"k": "3"}) == body({"k": "3", "same_category": "yes"})
    assert counted() == before + 2  # the fast path's answers counted under the route's template
    assert body({"k": "3", "same_category": "1"}) == body({"k": "3", "same_category": "on"})
    for path, status in [
        ("/v1/products/5/similar?k=0", 422),
        ("/v1/products/5/similar?k=101", 422),
        ("/v1/products/no-such/similar?k=3", 404),
        ("/v1/products/bad%20id/similar", 422),
    ]:
        response = live.client.get(path)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"] and response.json()["message"], response.text


def test_answers_validate_against_their_models(live: Live) -> None:
    from visnet.service.schemas import CategoriesOut, ProductOut, ReadyOut, SearchOut

    image = (live.root / "photos" / "1.jpg").read_bytes()
    assert _valid(SearchOut, _search(live, image, k="2"))["queries"][0]["results"]
    _valid(ProductOut, live.client.get("/v1/products/1"))
    _valid(ReadyOut, live.client.get("/readyz"))
    _valid(CategoriesOut, live.client.get("/v1/categories"))


# ---- settings, freshness, the command --------------------------------------------------------


def test_a_served_index_cannot_be_opened_by_anyone_else(live: Live) -> None:
    from visnet.index.protocol import StoreError

    manifest = json.loads((live.index / "manifest.json").read_text())
    with pytest.raises(StoreError):
        CatalogIndex.open(live.index, model_fingerprint=manifest["model_fingerprint"])
    assert live.client.get("/readyz").status_code == 200


def test_settings_from_file_env_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("VISNET_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "service.toml"
    config.write_text(
        '[service]\nindex = "/srv/index"\nmodel = "colour-histogram"\nport = 9000\n'
        "similar_cache_size = 5\nmax_objects = 2\n"
    )
    for name, value in {"PORT": "9100", "API_KEY": KEY, "MAX_OBJECTS": "3"}.items():
        monkeypatch.setenv(f"VISNET_{name}", value)
    monkeypatch.setenv("VISNET_REVIEW_QUEUE", "")  # empty: unset
    settings = load_settings(config, port=None, max_objects=None)
    assert (settings.port, settings.api_key, settings.max_objects) == (9100, KEY, 3)
    assert settings.similar_cache_size == 5 and settings.review_queue is None
    assert settings.index == Path("/srv/index") and settings.writes_enabled
    assert load_settings(config, port=9200).port == 9200
    assert load_settings(index="~/x", model="m").index == Path.home() / "x"
    with pytest.raises(ValueError, match="colour: Extra inputs are not permitted"):
        load_settings(config, colour="red")
    with pytest.raises(ValueError, match="precompute_k"):
        load_settings(config, precompute_k=0)
    monkeypatch.setenv("VISNET_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"max_pixels \(or VISNET_MAX_PIXELS\)"):
        load_settings(config)
    monkeypatch.delenv("VISNET_MAX_PIXELS")
    monkeypatch.delenv("VISNET_API_KEY")
    with pytest.raises(ValueError, match=r"index \(or VISNET_INDEX\): Field required"):
        load_settings(model="m")
    with pytest.raises(ValueError, match="api_key"):
        load_settings(config, api_key="short")


def test_recommendations_go_stale_on_writes_and_refresh(tmp_path: Path) -> None:
    from visnet.service.freshness import Recommendations

    _, index_dir = build_tiny_catalog(tmp_path)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    index = CatalogIndex.open(index_dir, model_fingerprint=manifest["model_fingerprint"])
    try:
        lists = Recommendations(index, k=20, refresh_after_s=0.05)
        assert lists.fresh
        lists.mark_stale()
        assert not lists.fresh
        assert not Recommendations(index, k=20, refresh_after_s=0).fresh  # a restart remembers
        lists.start()
        deadline = time.monotonic() + 20
        while not lists.fresh and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lists.stop() and lists.fresh
        assert Recommendations(index, k=20, refresh_after_s=0).fresh
    finally:
        index.close()


def test_the_serve_command_runs_one_server_process(tmp_path: Path) -> None:
    _, index = build_tiny_catalog(tmp_path)
    port = free_port()
    command = [str(Path(sys.executable).parent / "visnet"), "serve", "--index", str(index)]
    command += ["--model", "colour-histogram", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISNET_")}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready is not None and ready.status_code == 200
        assert ready.json()["products"] == 12
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
