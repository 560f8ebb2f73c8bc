"""API errors: one JSON shape `{"error": code, "message": text}`, their handlers, the body cap."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visnet.images import ImageError
from visnet.index.products import UnknownProductError
from visnet.service.schemas import FastJSON, dumps

__all__ = [
    "ApiError",
    "BodyLimitMiddleware",
    "error_response",
    "image_error",
    "install_error_handlers",
    "unknown_product",
]

log = logging.getLogger(__name__)

IMAGE_STATUS = {
    "not_an_image": 400,
    "truncated_image": 400,
    "image_too_large": 413,
    "unsupported_image": 415,
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}


class ApiError(Exception):
    """An error a client can act on: HTTP status, stable code, human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def unknown_product(product_id: str) -> ApiError:
    return ApiError(404, "unknown_product", f"no product with id {product_id!r} in the catalog")


def image_error(exc: ImageError) -> ApiError:
    """An images.py error -> 400 (not an image, truncated), 413 (too large), 415 (unsupported)."""
    return ApiError(IMAGE_STATUS.get(exc.code, 400), exc.code, str(exc))


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> FastJSON:
    return FastJSON({"error": code, "message": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error", "message"}` JSON; nothing else leaks (no tracebacks)."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> FastJSON:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> FastJSON:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> FastJSON:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(UnknownProductError)
    async def _unknown(_: Request, exc: UnknownProductError) -> FastJSON:
        return error_response(404, "unknown_product", str(exc))

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError) -> FastJSON:
        error = image_error(exc)
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> FastJSON:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, before they are buffered.

    A declared Content-Length over the cap is refused at once; a body without one (chunked) is
    counted as it arrives and refused when it passes the cap (the app's own response is dropped).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return
        state: dict[str, Any] = {"seen": 0, "over": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > self.max_bytes:
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
            await self._refuse(send, state["seen"])

    async def _refuse(self, send: Send, size: int) -> None:
        body = dumps(
            {
                "error": "upload_too_large",
                "message": f"request body is over {self.max_bytes:,} bytes ({size:,} sent); "
                "send a smaller image",
            }
        )
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
