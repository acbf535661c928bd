"""deploy/grafana/fleetgate.json: valid JSON, and every query names metrics a real gateway exports."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_dashboard import add_tenant
from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fleetgate.json"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
# What the dashboard must show (issue 9): each family has at least one panel.
REQUIRED = {
    "fleetgate_requests_total",
    "fleetgate_request_duration_seconds_bucket",
    "fleetgate_time_to_first_token_seconds_bucket",
    "fleetgate_inter_token_latency_seconds_bucket",
    "fleetgate_queue_wait_seconds_bucket",
    "fleetgate_tokens_total",
    "fleetgate_queue_depth",
    "fleetgate_shed_total",
    "fleetgate_limit_rejections_total",
    "fleetgate_replica_healthy",
    "fleetgate_replica_in_flight",
    "fleetgate_in_flight_requests",
    "fleetgate_outbox_backlog_segments",
    "fleetgate_outbox_open_requests",
    "fleetgate_delivery_failing_seconds",
    "fleetgate_delivered_events",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or Grafana variables)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors ([$__rate_interval])
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[m.end() :].lstrip().startswith("(") or m.group() in KEYWORDS:
            continue  # a function or an aggregation
        names.add(m.group())
    return names


def test_metric_names_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, model) (rate(fleetgate_x_bucket{model=~"$model", a="b}"}[5m])))'
    ) == {"fleetgate_x_bucket"}
    assert metric_names("sum(a_total) / on (x) group_left (y) count(b == 0) or vector(0)") == {"a_total", "b"}
    assert metric_names("topk(10, sum without (le) (rate(c[$__rate_interval])))") == {"c"}


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _queries(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(p["title"], t["expr"]) for p in data["panels"] for t in p.get("targets", [])]


def _variables(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, metric, label) of every `label_values(metric, label)` template variable."""
    out = []
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert m, query
            out.append((var["name"], m.group(1), m.group(2)))
    return out


def test_dashboard_is_well_formed() -> None:
    data = _dashboard()
    assert data["title"] == "fleetgate" and data["uid"] and data["schemaVersion"] >= 36
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in data["templating"]["list"]} >= {"datasource", "model", "tenant"}
    graphs = [p for p in data["panels"] if p["type"] != "row"]
    assert len(graphs) >= 20
    for p in graphs:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
    assert [v[0] for v in _variables(data)] == ["model", "tenant"]
    for title, expr in _queries(data):
        for a, b in ("()", "{}", "[]"):
            assert expr.count(a) == expr.count(b), (title, expr)
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and re.search(r"by \(le\b", expr), (title, expr)
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr, (title, expr)


@pytest.fixture
async def mixed() -> AsyncIterator[tuple[RunningGateway, str]]:
    """A gateway after a request mix: ok, streamed, rate-limited, queued and shed requests; its /metrics text."""
    engine = FakeEngine(model="smollm2", delay=0.05)
    await engine.start()
    admission = {"admission": {"max_in_flight_per_replica": 1, "max_queue": 1}}
    try:
        async with running_gateway([engine.url], sections=admission) as gw:
            body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                capped = await add_tenant(http, gw, "capped", rpm=1)

                async def call(headers: dict[str, str], stream: bool) -> int:
                    url = f"{gw.url}/v1/chat/completions"
                    async with http.post(url, json={**body, "stream": stream}, headers=headers) as r:
                        await r.read()
                        return r.status

                assert await call(gw.headers, False) == 200
                burst = [asyncio.create_task(call(gw.headers, True)) for _ in range(4)]
                await asyncio.sleep(0.1)  # one runs, one waits in the queue, the rest are shed
                async with http.get(f"{gw.url}/metrics", headers=gw.admin_headers) as r:
                    during = await r.text()
                statuses = await asyncio.gather(*burst)
                assert 200 in statuses and any(s in (429, 503) for s in statuses)
                await call(capped, False)
                assert await call(capped, False) == 429
                async with http.get(f"{gw.url}/metrics", headers=gw.admin_headers) as r:
                    after = await r.text()
            yield gw, during + after
    finally:
        await engine.stop()


def exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """(every series name the exposition declares, the label names of each name that carried samples)."""
    declared: set[str] = set()
    sampled: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            declared.add(family.name + suffix)
        for sample in family.samples:
            sampled.setdefault(sample.name, set()).update(sample.labels)
    return declared | set(sampled), sampled


async def test_queries_name_only_exported_metrics(mixed: tuple[RunningGateway, str]) -> None:
    _, text = mixed
    names, sampled = exported(text)
    used: set[str] = set()
    for title, expr in _queries(_dashboard()):
        found = metric_names(expr)
        assert found, (title, expr)
        unknown = found - names
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which the gateway does not export"
        used |= found
        # Label matchers name labels the metric really has (a typo there matches nothing, silently).
        for metric, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in sampled.get(metric, set()), f"panel {title!r}: {metric} has no label {label!r}"
    for name, metric, label in _variables(_dashboard()):
        assert label in sampled.get(metric, set()), f"${name}: {metric} has no label {label!r}"
    assert not REQUIRED - used, f"no panel shows {sorted(REQUIRED - used)}"
    # The request mix really produced the series the dashboard is about, not just their declarations.
    assert not REQUIRED - set(sampled), sorted(REQUIRED - set(sampled))
