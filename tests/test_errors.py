"""The error hierarchy maps to OpenAI-shaped JSON with the right status."""

from __future__ import annotations

import orjson
import pytest

from fleetgate.domain.errors import (
    ApiError,
    AuthenticationFailed,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fleetgate.http.errors import error_headers, error_payload


@pytest.mark.parametrize(
    ("err", "status", "type_"),
    [
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (AuthenticationFailed("x"), 401, "authentication_error"),
        (PermissionDenied("x"), 403, "permission_error"),
        (ModelNotFound("x"), 404, "invalid_request_error"),
        (RateLimited("x", retry_after=1.2), 429, "rate_limit_error"),
        (UpstreamError("x"), 502, "server_error"),
        (UpstreamUnavailable("x"), 503, "server_error"),
        (UpstreamTimeout("x"), 504, "server_error"),
    ],
)
def test_status_and_shape(err: ApiError, status: int, type_: str) -> None:
    body = orjson.loads(error_payload(err))
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    assert err.status == status


def test_retry_after_is_rounded_up_to_whole_seconds() -> None:
    headers = dict(error_headers(RateLimited("slow down", retry_after=1.2), "rid"))
    assert headers[b"retry-after"] == b"2"
    assert headers[b"x-request-id"] == b"rid"
    assert b"retry-after" not in dict(error_headers(InvalidRequest("x"), None))
