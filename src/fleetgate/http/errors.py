"""Map the typed error hierarchy to OpenAI-shaped JSON responses."""

from __future__ import annotations

import logging
import math

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fleetgate.domain.errors import ApiError, ErrorCode, InvalidRequest, NotFound

log = logging.getLogger(__name__)


def error_payload(err: ApiError) -> bytes:
    """The `{"error": {...}}` body OpenAI clients parse."""
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code.value}}
    )


def error_headers(err: ApiError, request_id: str | None = None) -> list[tuple[bytes, bytes]]:
    """Raw ASGI headers for an error response (content type, Retry-After, request id)."""
    headers = [(b"content-type", b"application/json")]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(err.retry_after))).encode()))
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    return headers


def error_response(err: ApiError, request_id: str | None = None) -> Response:
    """A Starlette response for an ApiError."""
    headers = {k.decode(): v.decode() for k, v in error_headers(err, request_id) if k != b"content-type"}
    return Response(error_payload(err), status_code=err.status, media_type="application/json", headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette handler for ApiError raised by non-hot-path endpoints."""
    assert isinstance(exc, ApiError)
    return error_response(exc, request.headers.get("x-request-id"))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Turn Starlette's own 404/405 into OpenAI-shaped errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"no route for {request.method} {request.url.path}"))
    err = InvalidRequest(
        f"{request.method} {request.url.path}: {exc.detail}", status=exc.status_code, code=ErrorCode.INVALID_REQUEST
    )
    return error_response(err)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """Any other exception of a non-hot-path endpoint: logged, answered as an OpenAI-shaped 500 (not plain text)."""
    log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ApiError("internal error in the gateway; it is logged"), request.headers.get("x-request-id"))
