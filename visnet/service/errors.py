"""API errors: one JSON shape `{"error": code, "message": text}`, its handlers, its OpenAPI."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from visnet.images import ImageError
from visnet.index.products import UnknownProductError
from visnet.service.schemas import ErrorOut
from visnet.service.slots import ModelBusyError

__all__ = [
    "ApiError",
    "error_body",
    "error_response",
    "errors",
    "image_error",
    "install_error_handlers",
]

log = logging.getLogger(__name__)

IMAGE_STATUS = {
    "not_an_image": 400,
    "truncated_image": 400,
    "bad_aspect_ratio": 400,
    "image_too_large": 413,
    "unsupported_image": 415,
}
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
}
WHEN = {  # what each documented error status means, for /openapi.json
    400: "the body cannot be parsed, or an upload is not an image, is truncated, or is a strip "
    "too long for its width (`bad_request`, `not_an_image`, `truncated_image`, "
    "`bad_aspect_ratio`)",
    401: "the X-API-Key header is missing (`unauthorized`)",
    403: "the X-API-Key header is wrong, or writes are disabled (`wrong_api_key`, "
    "`writes_disabled`)",
    404: "no such product, image, sample photo or triplet",
    413: "the body or the image is too large (`upload_too_large`, `image_too_large`)",
    415: "an image format that is not accepted (`unsupported_image`)",
    422: "a parameter is missing or out of its bounds (`invalid_request`)",
    503: "the model and the index are not loaded yet (`not_ready`), or the model is busy "
    "(`busy`, with a Retry-After header)",
}


class ApiError(Exception):
    """An error a client can act on: HTTP status, stable code, human message (and headers,
    such as a 429's Retry-After)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these error statuses (all `ErrorOut`)."""
    return {s: {"model": ErrorOut, "description": WHEN[s]} for s in statuses}


def image_error(exc: ImageError) -> ApiError:
    """An images.py error -> 400 (not an image, truncated, bad aspect ratio), 413 (too large),
    415 (unsupported)."""
    return ApiError(IMAGE_STATUS.get(exc.code, 400), exc.code, str(exc))


def error_body(code: str, message: str) -> bytes:
    """The error JSON as bytes, for the middlewares that answer before any route runs."""
    return ErrorOut(error=code, message=message).model_dump_json().encode()


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(code, message), status, headers=headers, media_type="application/json"
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error", "message"}` JSON; nothing else leaks (no tracebacks)."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(UnknownProductError)
    async def _unknown(_: Request, exc: UnknownProductError) -> Response:
        return error_response(404, "unknown_product", str(exc))

    @app.exception_handler(ModelBusyError)
    async def _busy(_: Request, exc: ModelBusyError) -> Response:
        headers = {"Retry-After": str(exc.retry_after)}
        return error_response(503, "busy", str(exc), headers)

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError) -> Response:
        error = image_error(exc)
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")
