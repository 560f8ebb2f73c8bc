"""The API docs page (Swagger UI) served from an installed package, never a CDN: works offline.

The assets come from the ``fastapi-offline`` package (its ``static/`` folder: the Swagger UI
bundle, stylesheet and icon; only the files, none of its code); the page is FastAPI's own,
built once, and its one inline script is allowed by its hash, so the docs keep the web page's
content policy with nothing else loosened.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "DOCS_URL", "docs_policy", "install_docs", "is_docs_path"]

log = logging.getLogger(__name__)

DOCS_URL = "/docs"
ASSETS_URL = f"{DOCS_URL}/assets"
ASSETS_PACKAGE = "fastapi_offline"  # ships swagger-ui-bundle.js and swagger-ui.css in static/
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _assets() -> Path | None:
    """The package's static folder, found without importing the package."""
    spec = find_spec(ASSETS_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def is_docs_path(path: str) -> bool:
    return path == DOCS_URL or path.startswith(f"{DOCS_URL}/")


def docs_policy(page: str, base_policy: str) -> str:
    """``base_policy`` with the page's inline scripts allowed by their SHA-256 hashes."""
    digests = [hashlib.sha256(script.encode()).digest() for script in _INLINE_SCRIPT.findall(page)]
    hashes = " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)
    return base_policy.replace("script-src 'self'", f"script-src 'self' {hashes}", 1)


def install_docs(app: FastAPI, base_policy: str) -> str:
    """Serve Swagger UI at ``/docs`` and its files at ``/docs/assets/``; returns the page's
    content policy. Create the app with ``docs_url=None``. Without the assets' package the
    service runs without docs (a warning says what to install)."""
    assets = _assets()
    if assets is None:
        log.warning("no API docs at %s: the %r package is not installed", DOCS_URL, ASSETS_PACKAGE)
        return base_policy
    html = get_swagger_ui_html(
        openapi_url=str(app.openapi_url),
        title=f"{app.title} API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
    )
    page = bytes(html.body).decode()

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    return docs_policy(page, base_policy)
