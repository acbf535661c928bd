"""The admin HTTP API (`/admin`, its own key): tenants, keys and the fleet, described at /admin/openapi.json.

Every path under /admin, the OpenAPI document included, needs the admin key: a middleware checks it before FastAPI
routes anything (FastAPI serves its OpenAPI document outside the app's dependencies).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetgate.domain.errors import ApiError, InvalidRequest, NotFound
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.http.errors import error_response, http_exception_handler, internal_error_handler
from fleetgate.tenancy.failures import FailureLimiter
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.secret_check import SecretCheck
from fleetgate.tenancy.store import TenantStore
from fleetgate.tenancy.views import KeyView, NewKey, TenantView, key_view, tenant_view


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


class RequireAdmin:
    """ASGI middleware: answers 401 (429 after repeated failures) unless the request carries the admin key."""

    def __init__(self, app: ASGIApp, check: SecretCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key, then pass the request on."""
        if scope["type"] == "http":
            header = next((value for name, value in scope["headers"] if name == b"authorization"), None)
            peer = scope.get("client")
            try:
                self.check.verify(header, client=peer[0] if peer else None)
            except ApiError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_admin_app(
    store: TenantStore,
    registry: ReplicaRegistry,
    admin_key: str,
    routers: Sequence[APIRouter] = (),
    *,
    failures: FailureLimiter | None = None,
) -> FastAPI:
    """The admin API bound to a store; every path needs `Authorization: Bearer <admin key>`."""
    check = SecretCheck(
        [admin_key],
        failures=failures,
        asked="admin API: send the admin key as `Authorization: Bearer <admin key>`",
    )
    app = FastAPI(
        title="fleetgate admin API",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        # Checked by RequireAdmin; declared here so the OpenAPI document says how to authenticate.
        dependencies=[Depends(HTTPBearer(auto_error=False, description="the admin key"))],
    )
    app.add_middleware(RequireAdmin, check=check)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors())
        return error_response(InvalidRequest(f"invalid request: {problems}"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, http_exception_handler)  # FastAPI's own (a body that is not UTF-8)
    app.add_exception_handler(Exception, internal_error_handler)

    @app.get("/tenants", response_model=list[TenantView], summary="List tenants")
    async def list_tenants(include_deleted: bool = False) -> list[TenantView]:
        return [tenant_view(t) for t in await store.list_tenants(include_deleted)]

    @app.get("/tenants/{external_id}", response_model=TenantView, summary="Show a tenant")
    async def get_tenant(external_id: str) -> TenantView:
        return tenant_view(await store.require_tenant(external_id))

    @app.put("/tenants/{external_id}", response_model=TenantView, summary="Create or update a tenant (idempotent)")
    async def put_tenant(external_id: str, body: TenantUpsert, response: Response) -> TenantView:
        try:
            spec = TenantSpec.model_validate({**body.model_dump(), "external_id": external_id})
        except ValueError as exc:
            raise InvalidRequest(f"invalid tenant: {exc}") from None
        tenant, outcome = await store.upsert_tenant(spec)
        response.status_code = 201 if outcome == "created" else 200
        response.headers["x-fleetgate-change"] = outcome
        return tenant_view(tenant)

    @app.delete("/tenants/{external_id}", status_code=204, summary="Delete a tenant (keeps its usage history)")
    async def delete_tenant(external_id: str) -> None:
        await store.delete_tenant(external_id)

    @app.post("/tenants/{external_id}/suspend", response_model=TenantView, summary="Suspend a tenant")
    async def suspend(external_id: str) -> TenantView:
        return tenant_view(await store.set_status(external_id, "suspended"))

    @app.post("/tenants/{external_id}/resume", response_model=TenantView, summary="Resume a tenant")
    async def resume(external_id: str) -> TenantView:
        return tenant_view(await store.set_status(external_id, "active"))

    @app.get("/tenants/{external_id}/keys", response_model=list[KeyView], summary="List a tenant's keys")
    async def list_keys(external_id: str) -> list[KeyView]:
        return [key_view(k) for k in await store.list_keys(external_id)]

    @app.post("/tenants/{external_id}/keys", response_model=NewKey, status_code=201, summary="Create a key")
    async def create_key(external_id: str, body: KeyCreate) -> NewKey:
        expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        key, info = await store.create_key(external_id, name=body.name, expires_at=expires)
        return NewKey(key=key, **key_view(info).model_dump())

    @app.post("/keys/{key_id}/revoke", response_model=KeyView, summary="Revoke a key now")
    async def revoke_key(key_id: str) -> KeyView:
        return key_view(await store.revoke_key(key_id))

    @app.post("/keys/{key_id}/rotate", response_model=NewKey, status_code=201, summary="Rotate a key")
    async def rotate_key(key_id: str, body: KeyRotate) -> NewKey:
        key, info = await store.rotate_key(key_id, body.grace_seconds)
        return NewKey(key=key, **key_view(info).model_dump())

    @app.get("/fleet", summary="Replicas with their health")
    async def fleet() -> list[dict[str, Any]]:
        return [r.to_json() for r in registry.all()]

    for router in routers:  # before the catch-all below, which would answer 404 for them
        app.include_router(router)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    async def unknown(path: str) -> None:
        raise NotFound(f"no admin route /admin/{path}")

    return app
