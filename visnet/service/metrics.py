"""Prometheus metrics: request counts and latencies by route and status, model and index gauges."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visnet.service.guards import documented_operations

__all__ = ["ANSWERED", "CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]

# the scope key where the HTTP layer (`visnet.service.protocol`) notes the status it answered a
# request with itself (a body timeout's 408): the app's own answer never reached the client
ANSWERED = "visnet.answered"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The service's metrics in their own registry (several apps in one process do not clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "visnet_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "visnet_http_request_duration_seconds",
            "Time from request to the end of the response, by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "visnet_stage_duration_seconds",
            "Time spent in one stage of a request (decode, detect, embed, search).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.similar_source = Counter(
            "visnet_similar_responses",
            "Similar-product answers by source (precomputed list, live search, response cache).",
            ["source"],
            registry=self.registry,
        )
        self.events = Counter(
            "visnet_events",
            "Shopper events posted to /v1/events, by outcome (accepted: logged; rejected: "
            "refused one by one, such as an unknown product).",
            ["outcome"],
            registry=self.registry,
        )
        self.query_crops = Counter(
            "visnet_query_crops",
            "Search crops kept for feedback triplets, by outcome (written; touched: kept "
            "already; dropped: the writer's queue was full, so the search answered without one; "
            "failed: could not be written).",
            ["outcome"],
            registry=self.registry,
        )
        self.products = Gauge(
            "visnet_index_products", "Products in the catalog index.", registry=self.registry
        )
        self.fresh = Gauge(
            "visnet_recommendations_fresh",
            "1 when the precomputed recommendation lists postdate the last catalog write.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "visnet_ready", "1 when the model and the index are loaded.", registry=self.registry
        )
        self.litter = Gauge(
            "visnet_startup_litter_removed",
            "What startup removed from the index folder, left by writes a kill interrupted "
            "(orphan_folders, stale_images, temp_files).",
            ["kind"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "visnet_http_refusals",
            "Answers and closes of the connection limits (visnet/service/protocol.py), by "
            "reason (header_timeout, body_timeout, headers_too_large, max_connections, "
            "bad_request) and status (the one sent, or 'closed' when the connection was closed "
            "without an answer). A body timeout's 408 is also in visnet_http_requests.",
            ["reason", "status"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "visnet_http_connections", "Open HTTP connections.", registry=self.registry
        )

    def bind(self, products: Callable[[], float], fresh: Callable[[], float]) -> None:
        """Read the index gauges from callbacks at scrape time (never stale, no bookkeeping)."""
        self.products.set_function(products)
        self.fresh.set_function(fresh)

    def time_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(scope: Scope, documented: list[tuple[str, re.Pattern[str]]]) -> str:
    """The matched route's template (`/v1/products/{product_id}`), never the raw path; for a
    request answered before routing (401, 413), the documented path it matches."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    for template, regex in documented:
        if regex.match(scope["path"]):
            return template
    return "unmatched"  # unknown paths share one label, so scanners cannot blow up cardinality


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: no per-request task or body copy)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self._documented: list[tuple[str, re.Pattern[str]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if self._documented is None:  # the app's routes are fixed once it serves
                found = documented_operations(scope["app"])
                self._documented = list({path: regex for _, path, regex, _ in found}.items())
            route, method = route_label(scope, self._documented), scope["method"]
            answered = scope.get(ANSWERED, status[0])  # what the client got
            self.metrics.requests.labels(route, method, str(answered)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
