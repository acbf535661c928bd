"""Shared helpers of the serving tests: posting through a real gateway and reading the ledger row it wrote."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from fleetgate.metering.events import UsageEvent
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

CHAT: dict[str, Any] = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def post(
    http: aiohttp.ClientSession,
    gw: RunningGateway,
    body: object,
    *,
    path: str = "/v1/chat/completions",
    key: str | None = None,
) -> aiohttp.ClientResponse:
    """POST a body (a dict, or raw bytes) with the demo key or `key`."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {key}"} if key is not None else gw.headers
    return await http.post(f"{gw.url}{path}", data=data, headers={**auth, "content-type": "application/json"})


async def ledger_row(gw: RunningGateway, request_id: str, timeout: float = 30.0) -> UsageEvent:
    """The ledger's event for one request, once the flusher delivered it."""
    found: list[UsageEvent] = []

    async def delivered() -> bool:
        event = await gw.gateway.ledger.get(request_id)
        if event is not None:
            found.append(event)
        return event is not None

    await wait_until(delivered, timeout=timeout, what=f"the ledger row of {request_id}")
    return found[0]


async def tenant_key(http: aiohttp.ClientSession, gw: RunningGateway, external_id: str, **spec: Any) -> str:
    """Create a tenant through the admin API; return a fresh key of it."""
    resp = await http.put(f"{gw.url}/admin/tenants/{external_id}", json=spec, headers=gw.admin_headers)
    assert resp.status in (200, 201), await resp.text()
    resp = await http.post(f"{gw.url}/admin/tenants/{external_id}/keys", json={}, headers=gw.admin_headers)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["key"])


def sse_events(raw: bytes) -> list[str]:
    """The events of an SSE body, as text."""
    return [e for e in raw.decode().split("\n\n") if e]
