"""The one typed error hierarchy; api/ maps each code to an OpenAI-shaped response."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The closed set of error codes a client or operator can see."""

    INVALID_REQUEST = "invalid_request"
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    INVALID_API_KEY = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limit_exceeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    OVERLOADED = "overloaded"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    INTERNAL = "internal_error"


class FleetgateError(Exception):
    """Base of every error fleetgate raises on purpose."""


class ConfigError(FleetgateError):
    """A configuration value is missing or invalid; the message names the field."""


class EngineBuildError(FleetgateError):
    """Building or locating an engine binary failed; the message says what to install or fix."""


class FleetError(FleetgateError):
    """Starting, supervising or stopping local engine replicas failed."""


class ApiError(FleetgateError):
    """An error that reaches an API client, with its HTTP status and OpenAI error type."""

    status: int = 500
    type: str = "server_error"
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        code: ErrorCode | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.reason = reason  # machine-readable detail for metrics (e.g. which limit), never shown to clients
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class InvalidRequest(ApiError):
    """The request body or parameters are malformed (400)."""

    status = 400
    type = "invalid_request_error"
    code = ErrorCode.INVALID_REQUEST


class AuthenticationFailed(ApiError):
    """Missing, unknown, revoked or expired API key (401)."""

    status = 401
    type = "authentication_error"
    code = ErrorCode.INVALID_API_KEY


class PermissionDenied(ApiError):
    """The key is valid but may not do this (403)."""

    status = 403
    type = "permission_error"
    code = ErrorCode.PERMISSION_DENIED


class ModelNotFound(ApiError):
    """No replica serves the requested model (404)."""

    status = 404
    type = "invalid_request_error"
    code = ErrorCode.MODEL_NOT_FOUND


class NotFound(ApiError):
    """The path or resource does not exist (404)."""

    status = 404
    type = "invalid_request_error"
    code = ErrorCode.NOT_FOUND


class RateLimited(ApiError):
    """A request, token, concurrency or budget limit was hit (429, with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = ErrorCode.RATE_LIMITED


class Overloaded(ApiError):
    """The fleet cannot take the request now (503, with Retry-After)."""

    status = 503
    type = "server_error"
    code = ErrorCode.OVERLOADED


class UpstreamUnavailable(ApiError):
    """No replica could be reached (503)."""

    status = 503
    type = "server_error"
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class UpstreamError(ApiError):
    """The engine answered with an error or broke the connection (502)."""

    status = 502
    type = "server_error"
    code = ErrorCode.UPSTREAM_ERROR


class UpstreamTimeout(ApiError):
    """The engine did not answer in time (504)."""

    status = 504
    type = "server_error"
    code = ErrorCode.UPSTREAM_TIMEOUT
