"""Gateway /metrics after a real request mix: names, labels, values; tenant label cardinality is capped."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.observability.metrics import OTHER, TenantLabels
from tests.gateway_harness import RunningGateway, gateway_with_fake_engine


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    async with gateway_with_fake_engine() as running:
        yield running


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


async def test_metrics_after_a_request_mix(gw: RunningGateway) -> None:
    body: dict[str, Any] = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        await http.put(f"{gw.url}/admin/tenants/capped", json={"rpm": 1}, headers=gw.admin_headers)
        resp = await http.post(f"{gw.url}/admin/tenants/capped/keys", json={}, headers=gw.admin_headers)
        capped = {"Authorization": f"Bearer {(await resp.json())['key']}"}
        for stream in (False, True, True):
            async with http.post(
                f"{gw.url}/v1/chat/completions", json={**body, "stream": stream}, headers=gw.headers
            ) as r:
                await r.read()
        for _ in range(2):  # the second is over the tenant's 1 request/min
            async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=capped) as r:
                await r.read()
        replica = gw.gateway.registry.all()[0]
        replica.metrics = ReplicaMetrics(scraped_at=time.monotonic(), waiting=3, running=2, kv_usage=0.5)
        async with http.get(f"{gw.url}/metrics", headers=gw.admin_headers) as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
            samples = _samples(await r.text())
    assert (
        _value(
            samples, "fleetgate_requests_total", tenant="demo", model="smollm2", status="ok", route="round_robin:turn"
        )
        == 3
    )
    assert _value(samples, "fleetgate_requests_total", tenant="capped", status="rejected") == 1
    assert _value(samples, "fleetgate_limit_rejections_total", tenant="capped", limit="rpm") == 1
    # The fake engine reports 7 prompt tokens, 3 of them cached, and 4 output tokens per request.
    assert _value(samples, "fleetgate_tokens_total", tenant="demo", kind="fresh") == 3 * 4
    assert _value(samples, "fleetgate_tokens_total", tenant="demo", kind="cached") == 3 * 3
    assert _value(samples, "fleetgate_tokens_total", tenant="demo", kind="output") == 3 * 4
    assert _value(samples, "fleetgate_request_duration_seconds_count", model="smollm2") == 4
    assert _value(samples, "fleetgate_time_to_first_token_seconds_count", model="smollm2") == 4
    assert _value(samples, "fleetgate_inter_token_latency_seconds_count", model="smollm2") == 2
    assert _value(samples, "fleetgate_replica_healthy", replica="engine-0") == 1
    assert _value(samples, "fleetgate_replica_in_flight", replica="engine-0") == 0
    assert "fleetgate_outbox_open_requests" in samples and "fleetgate_in_flight_requests" in samples
    assert _value(samples, "fleetgate_delivery_failing_seconds", consumer="ledger") == 0
    assert _value(samples, "fleetgate_engine_requests_waiting", replica="engine-0") == 3
    assert _value(samples, "fleetgate_engine_kv_pressure", replica="engine-0") == 0.5
    assert _value(samples, "fleetgate_replica_breaker_state", replica="engine-0") == 0  # closed
    assert _value(samples, "fleetgate_route_decisions_total", policy="round_robin") == 4  # 3 demo + 1 capped


def test_tenant_label_cap() -> None:
    labels = TenantLabels(cap=2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_model_names_a_client_makes_up_do_not_grow_the_series() -> None:
    from fleetgate.observability.metrics import GatewayMetrics
    from fleetgate.serving.outcome import RequestOutcome

    metrics = GatewayMetrics(max_tenant_labels=3)
    for i in range(50):  # a client probing random model names: every one a 404
        outcome = RequestOutcome(f"r{i}", "chat")
        outcome.tenant_name, outcome.model, outcome.status = "demo", f"made-up-{i}", "rejected"
        metrics.observe(outcome, "-", time.time())
    samples = _samples(metrics.render().decode())
    models = {lab["model"] for lab, _ in samples["fleetgate_requests_total"]}
    assert len(models) == 4 and OTHER in models
    assert _value(samples, "fleetgate_requests_total", model=OTHER) == 47
