"""Tenant-scoped read access to the I/O log: `GET /v1/logs?limit=&before=` and `GET /v1/logs/{request_id}`.

The caller's tenant comes only from its API key; every query is filtered by it, so a tenant sees its own records
and nothing else. Another tenant's record id answers 404 exactly like an unknown one, so ids do not leak.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from fleetgate.api.app import GET
from fleetgate.api.auth import Tenant
from fleetgate.domain.errors import InvalidRequest, NotFound
from fleetgate.iolog.log import IOLog

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
RECORD_OBJECT = "iolog.record"


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


def iolog_router(iolog: IOLog) -> APIRouter:
    """The I/O log read routes of the calling tenant."""
    router = APIRouter()

    @router.api_route("/v1/logs", methods=GET)
    async def list_logs(principal: Tenant, limit: str | None = None, before: str | None = None) -> Response:
        size = _limit(limit)  # read as text and checked here: a bad limit is a 400 naming it
        # One extra row tells whether another page exists without a count query.
        records = await iolog.read(principal.tenant.id, size + 1, before or None)
        page = records[:size]
        return _json(
            {
                "object": "list",
                "data": [{"object": RECORD_OBJECT, **record} for record in page],
                "first_id": page[0]["request_id"] if page else None,
                "last_id": page[-1]["request_id"] if page else None,
                "has_more": len(records) > size,
            }
        )

    @router.api_route("/v1/logs/{request_id}", methods=GET)
    async def get_log(principal: Tenant, request_id: str) -> Response:
        record = await iolog.get(principal.tenant.id, request_id)
        if record is None:
            raise NotFound(f"no log record with id {request_id!r}")
        return _json({"object": RECORD_OBJECT, **record})

    return router
