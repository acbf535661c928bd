"""The I/O log HTTP routes: each tenant reads only its own records; 401 without a key; errors are OpenAI-shaped."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from fleetgate.api.app import make_api
from fleetgate.api.auth import Credentials
from fleetgate.api.iolog import iolog_router
from fleetgate.config import IOLogConfig
from fleetgate.domain.errors import AuthenticationFailed
from fleetgate.domain.ids import request_id
from fleetgate.iolog.log import IOLog
from fleetgate.iolog.redaction import EMAIL_MARK

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


@dataclass(frozen=True)
class _Tenant:
    id: str


@dataclass(frozen=True)
class _Caller:
    tenant: _Tenant


async def _authenticate(authorization: bytes | None, *, client: str | None = None) -> _Caller:
    """A stub of TenantAuthenticator.authenticate: `Bearer <key>` from KEYS, else 401."""
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or token not in KEYS:
        raise AuthenticationFailed("invalid API key: check the key you were given")
    return _Caller(_Tenant(KEYS[token]))


def _client(log: IOLog) -> httpx2.AsyncClient:
    app = make_api([iolog_router(log)], Credentials.of(None, None, _authenticate))
    # In-process ASGI transport: no socket is opened at all.
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.fixture
async def log(sqlite_url: str) -> AsyncIterator[IOLog]:
    opened = IOLog(IOLogConfig(url=sqlite_url))
    await opened.start()
    yield opened
    await opened.stop()


@pytest.fixture
async def client(log: IOLog) -> AsyncIterator[httpx2.AsyncClient]:
    async with _client(log) as http:
        yield http


async def _seed(log: IOLog, tenant: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        rid = request_id()
        content = f"#{i} from {tenant}: mail me at me@example.com"
        log.record(
            request_id=rid,
            tenant_id=tenant,
            key_id=f"key-of-{tenant}",
            model="smollm2",
            status="ok",
            request_body=b'{"messages":[{"role":"user","content":"%s"}]}' % content.encode(),
            response_body=b'{"choices":[]}',
            retention_days=None,
        )
        ids.append(rid)
    assert await log.flush()
    return ids


def _error(resp: httpx2.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic key-a"}])
async def test_unauthenticated_is_401_on_both_routes(client: httpx2.AsyncClient, headers: dict[str, str]) -> None:
    for path in ("/v1/logs", f"/v1/logs/{request_id()}"):
        resp = await client.get(path, headers=headers)
        assert resp.status_code == 401
        assert _error(resp)["code"] == "invalid_api_key"


async def test_each_tenant_lists_only_its_own_records(log: IOLog, client: httpx2.AsyncClient) -> None:
    mine = await _seed(log, "tenant-a", 3)
    theirs = await _seed(log, "tenant-b", 2)
    resp = await client.get("/v1/logs", headers=A)
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["object"] == "list" and body["has_more"] is False
    assert [r["request_id"] for r in body["data"]] == mine[::-1]
    assert {r["tenant_id"] for r in body["data"]} == {"tenant-a"}
    assert all(r["object"] == "iolog.record" and EMAIL_MARK in r["request_body"] for r in body["data"])
    assert "me@example.com" not in resp.text
    resp = await client.get("/v1/logs", headers=B)
    assert [r["request_id"] for r in resp.json()["data"]] == theirs[::-1]


async def test_another_tenants_record_is_404_exactly_like_an_unknown_id(log: IOLog, client: httpx2.AsyncClient) -> None:
    (mine,) = await _seed(log, "tenant-a", 1)
    (theirs,) = await _seed(log, "tenant-b", 1)
    own = await client.get(f"/v1/logs/{mine}", headers=A)
    assert own.status_code == 200 and own.json()["request_id"] == mine and own.json()["tenant_id"] == "tenant-a"
    foreign = await client.get(f"/v1/logs/{theirs}", headers=A)
    unknown_id = request_id()
    unknown = await client.get(f"/v1/logs/{unknown_id}", headers=A)
    assert foreign.status_code == unknown.status_code == 404
    foreign_error, unknown_error = _error(foreign), _error(unknown)
    assert foreign_error["code"] == "not_found" and "tenant-b" not in foreign.text
    assert foreign_error["message"].replace(theirs, "ID") == unknown_error["message"].replace(unknown_id, "ID")
    assert (await client.get(f"/v1/logs/{theirs}", headers=B)).status_code == 200


async def test_pagination_with_limit_and_before(log: IOLog, client: httpx2.AsyncClient) -> None:
    mine = await _seed(log, "tenant-a", 5)
    await _seed(log, "tenant-b", 3)
    seen: list[str] = []
    before: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"before": before} if before else {})}
        body = (await client.get("/v1/logs", headers=A, params=params)).json()
        seen += [r["request_id"] for r in body["data"]]
        pages += 1
        assert body["last_id"] == (body["data"][-1]["request_id"] if body["data"] else None)
        if not body["has_more"]:
            break
        before = body["last_id"]
    assert seen == mine[::-1] and pages == 3


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}])
async def test_a_bad_limit_is_400_naming_the_param(client: httpx2.AsyncClient, params: dict[str, str]) -> None:
    resp = await client.get("/v1/logs", headers=A, params=params)
    assert resp.status_code == 400 and _error(resp)["param"] == "limit"


async def test_another_tenants_id_as_a_cursor_is_rejected(log: IOLog, client: httpx2.AsyncClient) -> None:
    await _seed(log, "tenant-a", 2)
    (theirs,) = await _seed(log, "tenant-b", 1)
    resp = await client.get("/v1/logs", headers=A, params={"before": theirs})
    assert resp.status_code == 400 and _error(resp)["param"] == "before"


async def test_a_store_outage_is_503_openai_shaped() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = IOLog(IOLogConfig(url=f"postgresql://fleetgate@127.0.0.1:{port}/iolog"), open_timeout=2)
    try:
        async with _client(down) as http:
            resp = await http.get("/v1/logs", headers=A)
            assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
            assert _error(resp)["code"] == "upstream_unavailable"
            assert (await http.get("/v1/logs", headers={})).status_code == 401  # auth is checked first
    finally:
        await down.stop()
