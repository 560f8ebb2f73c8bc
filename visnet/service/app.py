"""The FastAPI app: `create_app(settings)`; the model and the index load in its lifespan.

One process serves an index. The index folder takes an exclusive file lock (flock) when opened,
so a second process cannot open it: run uvicorn with one worker (``serve`` does). Concurrency
comes from inside that process: endpoints are ``async``, and CPU work (decode, detect, embed,
search, SQLite) runs on the thread pool, where numpy, torch, hnswlib and SQLite release the GIL.
Writes go through the same process, so a new product is visible at the very next query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visnet.service import event_routes, files, review_routes, routes
from visnet.service.docs import install_docs, is_docs_path
from visnet.service.engine import Engine
from visnet.service.errors import install_error_handlers
from visnet.service.guards import ApiKeyMiddleware, BodyLimitMiddleware
from visnet.service.metrics import Metrics, MetricsMiddleware
from visnet.service.settings import ServiceSettings

__all__ = ["create_app", "serve", "server_options"]

log = logging.getLogger(__name__)

STATIC = Path(str(package_files("visnet.service") / "static"))
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class PageHeadersMiddleware:
    """Security headers on every response; a strict content policy on the web page's files and
    on the API docs (``docs_policy``: the same, with the docs page's inline script's hash)."""

    def __init__(self, app: ASGIApp, docs_policy: str = PAGE_POLICY) -> None:
        self.app, self.docs_policy = app, docs_policy

    def _policy(self, path: str) -> str | None:
        if path == "/" or path.startswith("/static/"):
            return PAGE_POLICY
        return self.docs_policy if is_docs_path(path) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policy(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if policy is not None:
                    headers.append((b"content-security-policy", policy.encode()))
                    headers.append((b"x-frame-options", b"DENY"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _lifespan(settings: ServiceSettings, metrics: Metrics) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.review_queue is not None:  # checked first: a bad path fails before loading
            app.state.review = review_routes.ReviewDesk(settings.review_queue, settings.review_root)
        started = time.time()  # temporary files older than this are no write of this process
        engine = await run_in_threadpool(Engine.load, settings, metrics)
        await run_in_threadpool(_remove_litter, engine, metrics, started)
        metrics.bind(
            products=lambda: float(engine.product_count()),
            fresh=lambda: float(engine.recommendations.fresh),
        )
        app.state.engine = engine
        metrics.ready.set(1)
        try:
            yield
        finally:
            metrics.ready.set(0)
            app.state.engine = None
            await run_in_threadpool(engine.close)

    return lifespan


def _remove_litter(engine: Engine, metrics: Metrics, started: float) -> None:
    """Clean what killed writes left, with the index locked and before any write is served."""
    try:
        litter = files.remove_litter(engine.index, before=started)
    except OSError:  # litter is harmless to serve with: never a reason not to start
        log.exception("could not remove interrupted writes' litter from %s", engine.index.path)
        return
    for kind, count in asdict(litter).items():
        metrics.litter.labels(kind).set(count)
    log.info("startup removed from %s: %s", engine.index.path, litter)


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for one index and model; nothing loads until the server starts (lifespan)."""
    metrics = Metrics()
    app = FastAPI(
        title="VisNet",
        version="1",
        summary="Visual search and visual recommendation for an e-commerce catalog.",
        lifespan=_lifespan(settings, metrics),
        docs_url=None,  # served from the installed package by install_docs, never a CDN
        redoc_url=None,
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.engine, app.state.review = None, None
    app.state.event_gate = event_routes.EventGate(settings)
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(review_routes.router)
    app.include_router(event_routes.router)
    event_routes.install_event_schemas(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    docs_policy = install_docs(app, PAGE_POLICY)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    # outermost first: metrics see every request (401s and 413s included), then headers, then
    # the key and the size cap, both before the body is read
    events_cap = (settings.max_event_bytes, "send fewer events a batch")
    app.add_middleware(routes.SimilarFastPath)  # innermost: everything above still applies
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        caps={event_routes.EVENTS_PATH: events_cap},
    )
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(PageHeadersMiddleware, docs_policy=docs_policy)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def server_options(settings: ServiceSettings, metrics: Metrics | None = None) -> dict[str, Any]:
    """uvicorn's arguments for these settings: one process (the index lock allows no other),
    uvloop when installed, and our httptools protocol with the connection limits
    (`visnet.service.protocol`), counting what they refuse in ``metrics`` (the app's:
    ``app.state.metrics``). ``serve`` runs with them, and so do the limits' tests."""
    from visnet.service.protocol import limited_protocol

    protocol = limited_protocol(
        settings.header_timeout,
        settings.max_header_bytes,
        settings.body_timeout,
        settings.max_connections,
        metrics,
    )
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": 1,
        "log_level": settings.log_level,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "http": protocol if settings.http_protocol == "limited" else "httptools",
        "timeout_keep_alive": settings.keep_alive_timeout,
    }


def serve(settings: ServiceSettings) -> None:
    """Run the service with uvicorn (``server_options``), with room for its connections among
    the process's open files."""
    import uvicorn

    from visnet.service.protocol import raise_file_limit

    raise_file_limit(settings.max_connections)
    app = create_app(settings)
    uvicorn.run(app, **server_options(settings, app.state.metrics))
