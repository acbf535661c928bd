"""The two auth dependencies every route off the hot path uses: `admin` (the admin key; the metrics token only
where allowed) and `tenant` (a Principal from the tenant key and the client's address)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, Depends
from starlette.testclient import TestClient

from fleetgate.api.app import make_api
from fleetgate.api.auth import Credentials, Tenant, admin, admin_or_metrics_token
from fleetgate.domain.errors import AuthenticationFailed
from fleetgate.tenancy.auth import Principal
from fleetgate.tenancy.failures import FailureLimiter
from fleetgate.tenancy.models import Tenant as TenantModel

ADMIN = "secret-admin-key-0001"
METRICS = "metrics-token-0002"
ACME = TenantModel.model_construct(id="t-1", external_id="acme", name="Acme", status="active")


class Keys:
    """A stand-in for TenantGate.authenticate: one valid key; records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes | None, str | None]] = []

    async def __call__(self, authorization: bytes | None, *, client: str | None = None) -> Principal:
        self.calls.append((authorization, client))
        if authorization != b"Bearer fg-acme":
            raise AuthenticationFailed("invalid API key: check the key you were given")
        return Principal(key=None, tenant=ACME)  # type: ignore[arg-type]


def _client(credentials: Credentials) -> TestClient:
    router = APIRouter()

    @router.get("/admin-only", dependencies=[Depends(admin)])
    async def admin_only() -> dict[str, str]:
        return {"ok": "admin"}

    @router.get("/metrics-too", dependencies=[Depends(admin_or_metrics_token)])
    async def metrics_too() -> dict[str, str]:
        return {"ok": "metrics"}

    @router.get("/mine")
    async def mine(principal: Tenant) -> dict[str, str]:
        return {"tenant": principal.tenant.external_id}

    return TestClient(make_api([router], credentials))


def _get(client: TestClient, path: str, authorization: str | None) -> tuple[int, Any]:
    resp = client.get(path, headers={"Authorization": authorization} if authorization is not None else {})
    return resp.status_code, resp.json()


def test_without_an_admin_key_nothing_opens_the_admin_routes() -> None:
    client = _client(Credentials.of(None, None, Keys()))
    for path in ("/admin-only", "/metrics-too"):
        status, body = _get(client, path, "Bearer anything")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "admin_api_key is not set" in _get(client, "/admin-only", f"Bearer {ADMIN}")[1]["error"]["message"]


@pytest.mark.parametrize("header", [f"Bearer {ADMIN}", f"bearer  {ADMIN} "])
def test_the_admin_key_opens_both(header: str) -> None:
    client = _client(Credentials.of(ADMIN, METRICS, Keys()))
    assert _get(client, "/admin-only", header) == (200, {"ok": "admin"})
    assert _get(client, "/metrics-too", header) == (200, {"ok": "metrics"})


@pytest.mark.parametrize("header", [None, "", ADMIN, f"Basic {ADMIN}", f"Bearer {ADMIN}2", "Bearer fg-acme"])
def test_anything_else_is_refused(header: str | None) -> None:
    client = _client(Credentials.of(ADMIN, METRICS, Keys()))
    status, body = _get(client, "/admin-only", header)
    assert status == 401 and "admin key" in body["error"]["message"] and set(body) == {"error"}


def test_the_metrics_token_opens_only_where_allowed() -> None:
    client = _client(Credentials.of(ADMIN, METRICS, Keys()))
    assert _get(client, "/metrics-too", f"Bearer {METRICS}") == (200, {"ok": "metrics"})
    assert _get(client, "/admin-only", f"Bearer {METRICS}")[0] == 401


def test_the_tenant_comes_from_the_key_and_the_address_is_passed_on() -> None:
    keys = Keys()
    client = _client(Credentials.of(ADMIN, METRICS, keys))
    assert _get(client, "/mine?tenant=globex", "Bearer fg-acme") == (200, {"tenant": "acme"})
    status, body = _get(client, "/mine", f"Bearer {ADMIN}")  # the admin key is no tenant key
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert keys.calls == [(b"Bearer fg-acme", "testclient"), (f"Bearer {ADMIN}".encode(), "testclient")]


def test_admin_failures_count_against_the_address() -> None:
    client = _client(Credentials.of(ADMIN, METRICS, Keys(), FailureLimiter(burst=2)))
    assert [_get(client, "/admin-only", "Bearer wrong")[0] for _ in range(3)] == [401, 401, 429]
    assert _get(client, "/admin-only", f"Bearer {ADMIN}")[0] == 200  # the right key still opens from there
