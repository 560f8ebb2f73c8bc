"""The API docs page: served from an installed package (no CDN), under the page's content
policy."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import service_settings

from visnet.service import create_app

pytest.importorskip("fastapi_offline", reason="the API docs' Swagger UI files are missing")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    index = Path(tmp_path_factory.mktemp("docs")) / "index"  # never opened: no lifespan runs
    yield TestClient(create_app(service_settings(index=index, model="colour-histogram")))


def test_docs_reference_only_local_urls(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(https?:)?//[a-z0-9]", page.text, re.IGNORECASE), "a remote URL"
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(urls) == [
        "/docs/assets/favicon.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    assert "url: '/openapi.json'" in page.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ],
)
def test_docs_assets_are_served_with_their_media_type(
    client: TestClient, name: str, media_type: str
) -> None:
    asset = client.get(f"/docs/assets/{name}")
    assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
    assert len(asset.content) > 0 and "content-security-policy" in asset.headers


def test_docs_keep_the_page_policy_with_only_their_inline_script_allowed(
    client: TestClient,
) -> None:
    page, home = client.get("/docs"), client.get("/")
    policy, base = page.headers["content-security-policy"], home.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert policy == base.replace("script-src 'self'", f"script-src 'self' 'sha256-{digest}'")
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"


def test_docs_are_not_part_of_the_api_description(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith("/docs") for path in paths)
    assert client.get("/redoc").status_code == 404
