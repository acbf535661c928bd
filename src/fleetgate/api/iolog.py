"""Tenant-scoped read access to the I/O log: `GET /v1/logs?limit=&before=` and `GET /v1/logs/{request_id}`.

The caller's tenant comes only from its API key; every query is filtered by it, so a tenant sees its own records
and nothing else. Another tenant's record id answers 404 exactly like an unknown one, so ids do not leak.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetgate.domain.errors import ApiError, InvalidRequest, NotFound
from fleetgate.http.errors import error_response
from fleetgate.iolog.log import IOLog

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
RECORD_OBJECT = "iolog.record"


class _TenantRef(Protocol):
    @property
    def id(self) -> str: ...


class Caller(Protocol):
    """What `authenticate` returns: anything with `.tenant.id` (a `fleetgate.tenancy.auth.Principal`)."""

    @property
    def tenant(self) -> _TenantRef: ...


class Authenticate(Protocol):
    """`TenantAuthenticator.authenticate`: the header's bytes and the peer address, to a caller or 401/403/429."""

    def __call__(self, authorization: bytes | None, *, client: str | None = None) -> Awaitable[Caller]:
        """Resolve the caller."""
        ...


def _peer(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _authorization(request: Request) -> bytes | None:
    # The raw header bytes, as TenantAuthenticator.authenticate takes them (no decode/encode round trip).
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit") from None
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return value


def _json(body: dict[str, Any]) -> Response:
    # Prompts and answers: never let a proxy or browser keep a copy.
    return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})


def iolog_routes(iolog: IOLog, authenticate: Authenticate) -> list[Route]:
    """The I/O log read routes; `authenticate(authorization_header_bytes)` resolves the caller or raises 401/403."""

    async def list_logs(request: Request) -> Response:
        try:
            caller = await authenticate(_authorization(request), client=_peer(request))
            limit = _limit(request.query_params.get("limit"))
            before = request.query_params.get("before") or None
            # One extra row tells whether another page exists without a count query.
            records = await iolog.read(caller.tenant.id, limit + 1, before)
        except ApiError as err:
            return error_response(err)
        page = records[:limit]
        return _json(
            {
                "object": "list",
                "data": [{"object": RECORD_OBJECT, **record} for record in page],
                "first_id": page[0]["request_id"] if page else None,
                "last_id": page[-1]["request_id"] if page else None,
                "has_more": len(records) > limit,
            }
        )

    async def get_log(request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        try:
            caller = await authenticate(_authorization(request), client=_peer(request))
            record = await iolog.get(caller.tenant.id, request_id)
            if record is None:
                raise NotFound(f"no log record with id {request_id!r}")
        except ApiError as err:
            return error_response(err)
        return _json({"object": RECORD_OBJECT, **record})

    return [
        Route("/v1/logs", list_logs, methods=["GET"]),
        Route("/v1/logs/{request_id}", get_log, methods=["GET"]),
    ]
