"""The admin API, fuzzed from its own OpenAPI document (schemathesis), with the admin key, against the live gateway.

Every operation gets valid data (positive) and data that breaks its schema (negative) in path parameters, query
strings and bodies. Checked on every answer: no server error, a documented response matches its schema and
content type, and every refusal is OpenAI-shaped (the admin API answers errors like the rest of the gateway).

schemathesis's own pytest integration (`schemathesis.pytest.from_fixture`) reads `Function._nodeid`, which pytest 9
no longer has, so the operations are walked here: one Hypothesis run per operation and mode, every failure
collected and reported together.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.fuzz.client import Answer, assert_no_server_error, assert_openai_error, send
from tests.fuzz.conftest import FuzzGateway
from tests.keys import ADMIN_KEY

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
EXAMPLES_PER_MODE = 60
CHECKS = [schemathesis.checks.not_a_server_error, response_schema_conformance, content_type_conformance]
RUN = settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=EXAMPLES_PER_MODE,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)


@pytest.fixture(scope="package")
def admin_schema(fuzz_gateway: FuzzGateway) -> Any:
    """The admin API's OpenAPI document, read from the running gateway with the admin key."""
    url = f"{fuzz_gateway.gw.url}/admin"
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=dict(ADMIN_HEADERS), timeout=15)
    schema.config.update(base_url=url)
    # Requests without the admin key are the endpoint fuzz's job, from another address: failed authentications
    # count per address, and a few dozen from here would get every later request refused with 429 before any
    # handler ran, the fuzz tenant's included.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def _check(case: Any) -> None:
    """Call the live API (a schemathesis Case) and hold the answer to the checks."""
    if case.headers is None:
        case.headers = {}
    case.headers.update(ADMIN_HEADERS)
    response = case.call_and_validate(headers=dict(ADMIN_HEADERS), timeout=15, checks=CHECKS)  # it adds to them
    assert response.status_code not in (401, 429), f"the admin key was refused: {response.content[:300]!r}"
    if response.status_code >= 400:
        headers = {k.lower(): v[0] for k, v in response.headers.items() if v}
        answer = Answer(case.method, case.formatted_path, response.status_code, headers, response.content)
        try:
            assert_openai_error(answer)
        except AssertionError:
            sent = case.as_curl_command(headers={"Authorization": "Bearer <admin key>"})
            raise AssertionError(
                f"{response.status_code} is not an OpenAI error: {response.content[:300]!r}\nreproduce: {sent}"
            ) from None


def _fuzz(operation: Any, mode: GenerationMode) -> None:
    @RUN
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _check(case)

    run()


def test_admin_api(admin_schema: Any) -> None:
    operations = [r.ok() for r in admin_schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 15, [op.label for op in operations]  # the document lists every admin operation
    failures: list[str] = []
    for operation in operations:
        # Negative data needs something that can break the schema: a body or a query (a string path parameter
        # cannot be invalid).
        breakable = len(operation.body) or len(operation.query)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if breakable else (GenerationMode.POSITIVE,):
            try:
                _fuzz(operation, mode)
            except (Exception, BaseExceptionGroup) as exc:  # the failing example, shrunk, with a curl line
                failures.append(f"--- {operation.label} [{mode.value}]\n{exc}")
    assert not failures, f"{len(failures)} admin operations failed:\n" + "\n".join(failures)


# Numbers at the edges of what the admin API's fields, its database columns and Python's dates can hold.
EDGE_NUMBERS: list[Any] = [-1, 0, 2**31, 2**63, 2**64, 10**30, 1e13, 1e300, 1e308, 3_000_000]
TENANT_NUMBERS = ["weight", "rpm", "tpm", "max_concurrency", "budget", "max_input_tokens", "max_output_tokens"]
TENANT_NUMBERS += ["io_log_retention_days"]


def _admin(fuzz: FuzzGateway, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
    raw = None if body is None else json.dumps(body).encode()
    return send(fuzz.port, method, f"/admin{path}", raw, {**ADMIN_HEADERS, "content-type": "application/json"})


@pytest.mark.parametrize("field", TENANT_NUMBERS)
def test_tenant_numbers_out_of_range(fuzz_gateway: FuzzGateway, field: str) -> None:
    for value in EDGE_NUMBERS:
        assert_no_server_error(_admin(fuzz_gateway, "PUT", f"/tenants/edge-{field}", {field: value}))


@pytest.mark.parametrize(
    ("path", "field"),
    [("/tenants/{tenant}/keys", "expires_in_days"), ("/keys/{key}/rotate", "grace_seconds")],
)
def test_key_durations_out_of_range(fuzz_gateway: FuzzGateway, path: str, field: str) -> None:
    tenant = f"edge-keys-{field}"
    assert _admin(fuzz_gateway, "PUT", f"/tenants/{tenant}", {}).status in (200, 201)
    for value in EDGE_NUMBERS:
        key = _admin(fuzz_gateway, "POST", f"/tenants/{tenant}/keys", {}).json()["id"]
        assert_no_server_error(_admin(fuzz_gateway, "POST", path.format(tenant=tenant, key=key), {field: value}))


@pytest.mark.parametrize("query", ["price_book", "limit"])
def test_usage_numbers_out_of_range(fuzz_gateway: FuzzGateway, query: str) -> None:
    path = "/usage" if query == "price_book" else "/usage/events"
    for value in EDGE_NUMBERS:
        assert_no_server_error(_admin(fuzz_gateway, "GET", f"{path}?{query}={value}"))


@pytest.mark.parametrize("body", [b"\xff", b'{"name": "\xff"}', b"\xef\xbb\xbf{}"])
def test_bodies_that_are_not_utf8(fuzz_gateway: FuzzGateway, body: bytes) -> None:
    for path in ("/tenants/edge-utf8", "/adapters/edge-utf8"):
        answer = send(
            fuzz_gateway.port, "PUT", f"/admin{path}", body, {**ADMIN_HEADERS, "content-type": "application/json"}
        )
        assert_no_server_error(answer)
