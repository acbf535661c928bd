"""The admin HTTP API (`/admin`, the admin key): tenants, keys and the fleet, described at /admin/openapi.json.

Every path under /admin needs the admin key, the OpenAPI document and unknown paths included (a catch-all route
answers those, after the key): a caller without it learns nothing about which routes exist. The document
describes the answers the API really gives: OpenAI-shaped errors, 400 for what FastAPI calls 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from fleetgate.api.app import GET
from fleetgate.api.auth import admin
from fleetgate.api.errors import error_responses
from fleetgate.domain.errors import InvalidRequest, NotFound
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from fleetgate.tenancy.views import KeyView, NewKey, TenantView, key_view, tenant_view

TITLE = "fleetgate admin API"
NOT_FOUND = error_responses(404)
# The methods the catch-all answers after checking the key: every one a client is likely to try.
ANY_METHOD = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]
ROUTED = {"GET", "POST", "PUT", "DELETE"}  # an unknown path with one of these is a 404, with another a 405


class KeyCreate(BaseModel):
    """Body of `POST /admin/tenants/{external_id}/keys`."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
    expires_in_days: float | None = Field(None, gt=0, le=36_500, allow_inf_nan=False)


class KeyRotate(BaseModel):
    """Body of `POST /admin/keys/{key_id}/rotate`."""

    model_config = ConfigDict(extra="forbid")
    grace_seconds: float = Field(
        0, ge=0, le=365 * 86_400, allow_inf_nan=False, description="how long the old key keeps working (at most a year)"
    )


class TenantUpsert(BaseModel):
    """Body of `PUT /admin/tenants/{external_id}`: a TenantSpec without the id (it is in the path)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    status: str = "active"
    priority: str = "standard"
    weight: int = 1
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget: float | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_tokens_policy: str = "clamp"
    models: list[str] = Field(default_factory=lambda: ["*"])
    adapters: list[str] = Field(default_factory=list)
    io_log: bool = False
    io_log_retention_days: float | None = None


def _tenant_routes(router: APIRouter, store: TenantStore) -> None:
    @router.get("/tenants", response_model=list[TenantView], summary="List tenants")
    async def list_tenants(include_deleted: bool = False) -> list[TenantView]:
        return [tenant_view(t) for t in await store.list_tenants(include_deleted)]

    @router.get("/tenants/{external_id}", response_model=TenantView, summary="Show a tenant", responses=NOT_FOUND)
    async def get_tenant(external_id: str) -> TenantView:
        return tenant_view(await store.require_tenant(external_id))

    @router.put("/tenants/{external_id}", response_model=TenantView, summary="Create or update a tenant (idempotent)")
    async def put_tenant(external_id: str, body: TenantUpsert, response: Response) -> TenantView:
        try:
            spec = TenantSpec.model_validate({**body.model_dump(), "external_id": external_id})
        except ValueError as exc:
            raise InvalidRequest(f"invalid tenant: {exc}") from None
        tenant, outcome = await store.upsert_tenant(spec)
        response.status_code = 201 if outcome == "created" else 200
        response.headers["x-fleetgate-change"] = outcome
        return tenant_view(tenant)

    @router.delete(
        "/tenants/{external_id}",
        status_code=204,
        summary="Delete a tenant (keeps its usage history)",
        responses=NOT_FOUND,
    )
    async def delete_tenant(external_id: str) -> None:
        await store.delete_tenant(external_id)

    @router.post(
        "/tenants/{external_id}/suspend", response_model=TenantView, summary="Suspend a tenant", responses=NOT_FOUND
    )
    async def suspend(external_id: str) -> TenantView:
        return tenant_view(await store.set_status(external_id, "suspended"))

    @router.post(
        "/tenants/{external_id}/resume", response_model=TenantView, summary="Resume a tenant", responses=NOT_FOUND
    )
    async def resume(external_id: str) -> TenantView:
        return tenant_view(await store.set_status(external_id, "active"))


def _key_routes(router: APIRouter, store: TenantStore) -> None:
    @router.get(
        "/tenants/{external_id}/keys", response_model=list[KeyView], summary="List a tenant's keys", responses=NOT_FOUND
    )
    async def list_keys(external_id: str) -> list[KeyView]:
        return [key_view(k) for k in await store.list_keys(external_id)]

    @router.post(
        "/tenants/{external_id}/keys",
        response_model=NewKey,
        status_code=201,
        summary="Create a key",
        responses=NOT_FOUND,
    )
    async def create_key(external_id: str, body: KeyCreate) -> NewKey:
        expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        key, info = await store.create_key(external_id, name=body.name, expires_at=expires)
        return NewKey(key=key, **key_view(info).model_dump())

    @router.post("/keys/{key_id}/revoke", response_model=KeyView, summary="Revoke a key now", responses=NOT_FOUND)
    async def revoke_key(key_id: str) -> KeyView:
        return key_view(await store.revoke_key(key_id))

    @router.post(
        "/keys/{key_id}/rotate", response_model=NewKey, status_code=201, summary="Rotate a key", responses=NOT_FOUND
    )
    async def rotate_key(key_id: str, body: KeyRotate) -> NewKey:
        key, info = await store.rotate_key(key_id, body.grace_seconds)
        return NewKey(key=key, **key_view(info).model_dump())


def admin_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of the admin routes (paths relative to /admin), with the errors they really answer."""
    doc = get_openapi(title=TITLE, version="1", routes=routes, servers=[{"url": "/admin"}])
    for operations in doc["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            # FastAPI documents a 422 where it validates something; such a request is answered 400 (api.errors).
            if responses.pop("422", None) is None:
                responses.pop("400", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(unused, None)
    return doc


def _document_and_catch_all(router: APIRouter, documented: Sequence[BaseRoute]) -> None:
    cached: dict[str, Any] = {}

    @router.api_route("/openapi.json", methods=GET, include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        if not cached:  # the routes are fixed once the app is built
            cached.update(admin_document(documented))
        return cached

    @router.api_route("/{path:path}", methods=ANY_METHOD, include_in_schema=False)
    async def unknown(path: str, request: Request) -> None:
        if request.method not in ROUTED:
            raise HTTPException(405)  # worded by http.errors.http_exception_handler, like every 405
        raise NotFound(f"no admin route /admin/{path}")


def admin_router(store: TenantStore, registry: ReplicaRegistry, routers: Sequence[APIRouter] = ()) -> APIRouter:
    """`/admin`: tenants, keys, the fleet and `routers` (usage, adapters), every path behind the admin key."""
    inner = APIRouter(dependencies=[Depends(admin)], responses=error_responses(400, 401, 429))
    _tenant_routes(inner, store)
    _key_routes(inner, store)

    @inner.get("/fleet", summary="Replicas with their health")
    async def fleet() -> list[dict[str, Any]]:
        return [r.to_json() for r in registry.all()]

    for router in routers:
        inner.include_router(router)
    _document_and_catch_all(inner, list(inner.routes))  # last: the catch-all would answer 404 for anything after it
    outer = APIRouter(prefix="/admin")
    outer.include_router(inner)
    return outer
