"""The admin OpenAPI document describes the answers the admin API really gives: OpenAI-shaped errors (400, 401,
404, 429), never FastAPI's 422 HTTPValidationError; and it is served only with the admin key."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.gateway_harness import RunningGateway

METHODS = {"get", "put", "post", "delete"}


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return dict(found)


def _error_schema(doc: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return _resolve(doc, response["content"]["application/json"]["schema"])


async def _document(gw: RunningGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/admin/openapi.json") as resp:
            assert resp.status == 401  # behind the admin key
        async with http.get(f"{gw.url}/admin/openapi.json", headers=gw.admin_headers) as resp:
            assert resp.status == 200
            return dict(await resp.json())


async def test_every_admin_operation_declares_openai_shaped_errors(gw: RunningGateway) -> None:
    doc = await _document(gw)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    operations = [(m, path, op) for path, ops in doc["paths"].items() for m, op in ops.items() if m in METHODS]
    assert len(operations) >= 15
    for method, path, op in operations:
        responses = op["responses"]
        where = f"{method.upper()} {path}"
        assert "422" not in responses, where
        assert {"401", "429"} <= set(responses), where
        validated = bool(op.get("parameters")) or "requestBody" in op
        assert ("400" in responses) == validated, where  # a 400 wherever FastAPI validates something
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                body = _error_schema(doc, response)
                assert body["required"] == ["error"], (where, status)
                error = _resolve(doc, body["properties"]["error"])
                assert set(error["required"]) == {"message", "type", "param", "code"}, (where, status)
    assert "404" in doc["paths"]["/tenants/{external_id}"]["get"]["responses"]
    assert "404" in doc["paths"]["/usage/events/{event_id}"]["get"]["responses"]


async def test_a_validation_error_is_the_documented_400(gw: RunningGateway) -> None:
    doc = await _document(gw)
    declared = _error_schema(doc, doc["paths"]["/tenants/{external_id}"]["put"]["responses"]["400"])
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{gw.url}/admin/tenants/acme", json={"rpm": "many"}, headers=gw.admin_headers) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert set(body) == set(declared["properties"]) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"} and "rpm" in body["error"]["message"]
