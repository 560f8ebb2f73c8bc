"""Checks that answer before a request body is read (pure ASGI): the API key, the body-size cap."""

from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import FastAPI
from fastapi.security import APIKeyHeader
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visnet.service.errors import error_body

__all__ = ["API_KEY", "ApiKeyMiddleware", "BodyLimitMiddleware", "documented_operations"]

KEY_HEADER, KEY_SCHEME = "X-API-Key", "ApiKey"
# Write routes declare `dependencies=[Security(API_KEY)]`: that documents the key in
# /openapi.json, and ApiKeyMiddleware checks the key on exactly the operations documented so.
# The dependency itself checks nothing: FastAPI runs dependencies after it has read the body.
API_KEY = APIKeyHeader(
    name=KEY_HEADER,
    auto_error=False,
    scheme_name=KEY_SCHEME,
    description="the server's key (`--api-key` or VISNET_API_KEY); writes need it",
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def documented_operations(app: FastAPI) -> list[tuple[str, str, re.Pattern[str], dict]]:
    """(method, path template, path regex, OpenAPI entry) of every operation in /openapi.json:
    what a middleware matches a request against before the router has run."""
    return [
        (method.upper(), path, compile_path(path)[0], operation)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
    ]


def write_operations(app: FastAPI) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path regex) of every operation whose OpenAPI entry requires the key."""
    return [
        (method, regex)
        for method, _, regex, operation in documented_operations(app)
        if any(KEY_SCHEME in need for need in operation.get("security", ()))
    ]


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    """A JSON error that closes the connection, so the unread body is never taken in."""
    body = error_body(code, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class ApiKeyMiddleware:
    """Write routes need the configured key in X-API-Key, checked before the body is read.

    No key configured: 403 `writes_disabled`; no header: 401 `unauthorized`; a wrong key: 403
    `wrong_api_key` (compared in constant time). Reads pass straight through.
    """

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = None if api_key is None else api_key.encode()
        self._writes: list[tuple[str, re.Pattern[str]]] | None = None

    def _is_write(self, scope: Scope) -> bool:
        if self._writes is None:  # the app's routes are fixed once it serves
            self._writes = write_operations(scope["app"])
        method, path = scope["method"], scope["path"]
        return any(m == method and regex.match(path) for m, regex in self._writes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or not self._is_write(scope):
            await self.app(scope, receive, send)
            return
        given = _header(scope, KEY_HEADER.lower().encode())
        if self.expected is None:
            await _answer(
                send,
                403,
                "writes_disabled",
                "write endpoints are disabled: the server has no API key configured "
                "(start it with --api-key or VISNET_API_KEY)",
            )
        elif not given:
            await _answer(send, 401, "unauthorized", f"this endpoint needs the {KEY_HEADER} header")
        elif not hmac.compare_digest(given, self.expected):
            await _answer(send, 403, "wrong_api_key", f"the {KEY_HEADER} header is not the key")
        else:
            await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, before they are buffered.

    A declared Content-Length over the cap is refused at once; a body without one (chunked) is
    counted as it arrives and refused when it passes the cap (the app's own response is dropped).
    ``caps``: path -> (a smaller cap, what to do instead), for routes that take small bodies
    (``POST /v1/events``).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, caps: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.app, self.max_bytes, self.caps = app, max_bytes, caps or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        cap, advice = self.caps.get(scope["path"], (self.max_bytes, "send a smaller image"))
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await self._refuse(send, cap, declared, advice)
            return
        state: dict[str, Any] = {"seen": 0, "over": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > cap:
                state["over"] = True
                raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if not state["over"]:
                state["started"] = True
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(send, cap, state["seen"], advice)

    async def _refuse(self, send: Send, cap: int, size: int, advice: str) -> None:
        message = f"request body is over {cap:,} bytes ({size:,} sent); {advice}"
        await _answer(send, 413, "upload_too_large", message)


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
