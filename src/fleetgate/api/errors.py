"""Every HTTP surface but the hot path answers errors in OpenAI's shape: the handlers, and how OpenAPI shows them.

A request FastAPI cannot validate is a 400 naming the field (OpenAI's status for a bad request), never FastAPI's
422; Starlette's own 404/405 and any unexpected exception are reshaped the same way (fleetgate.http.errors).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fleetgate.domain.errors import ApiError, InvalidRequest
from fleetgate.http.errors import api_error_handler, error_response, http_exception_handler, internal_error_handler


class ErrorDetail(BaseModel):
    """The `error` object of an OpenAI error body."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """`{"error": {...}}`: what every refusal of the gateway looks like."""

    error: ErrorDetail


_MEANING = {
    400: "Invalid request: the message names the field to fix",
    401: "Missing or wrong credentials",
    404: "Not found",
    429: "Too many failed authentications from this address (see Retry-After)",
    503: "A dependency (the usage ledger) is unavailable; retry after Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses, each with the OpenAI error body."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in statuses}


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """A request FastAPI could not validate: a 400 that names each field and what is wrong with it."""
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors())
    return error_response(InvalidRequest(f"invalid request: {problems}"), request.headers.get("x-request-id"))


def install_error_handlers(app: FastAPI) -> None:
    """The one place the app's exception handlers are set."""
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_exception_handler)  # 404/405, and a body that is not UTF-8
    app.add_exception_handler(Exception, internal_error_handler)
