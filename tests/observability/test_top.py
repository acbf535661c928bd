"""`fleetgate top`: one frame rendered from fixed data, and the command against a real gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from fleetgate.cli import top
from tests.api.test_dashboard import attach_dashboard
from tests.fakes import FakeEngine, free_port
from tests.gateway_harness import ADMIN_KEY, RunningGateway, running_gateway

OVERVIEW: dict[str, Any] = {
    "object": "dashboard.overview",
    "generated_at": 1767323045.0,  # 2026-01-02 03:04:05 UTC
    "step": 5.0,
    "window": 900.0,
    "fleet": [
        {
            "id": "gpu-a",
            "models": ["llama-3-8b"],
            "healthy": True,
            "in_flight": 12,
            "queue": 3,
            "kv": 0.734,
            "cache_hit": 0.5,
            "tokens_per_s": 1234.5,
        },
        {
            "id": "gpu-b",
            "models": [],
            "healthy": False,
            "in_flight": 0,
            "queue": None,
            "kv": None,
            "cache_hit": None,
            "tokens_per_s": None,
        },
    ],
    "tenants": [
        {
            "tenant": "acme",
            "requests_per_s": 4.25,
            "input_tokens_per_s": 900.0,
            "output_tokens_per_s": 310.5,
            "throttles": 7,
            "spend_today": "12.345",
        },
        {
            "tenant": "globex",
            "requests_per_s": 0.0,
            "input_tokens_per_s": 0.0,
            "output_tokens_per_s": 0.0,
            "throttles": 0,
            "spend_today": "0.00",
        },
    ],
    "currency": "USD",
    "usage_error": None,
    "now": {"in_flight": 12, "queue_depth": 5, "requests_per_s": 4.25, "output_tokens_per_s": 310.5},
    "series": {"ttft_p50": [0.2, 0.12, None], "ttft_p99": [1.5, 2.25, None]},
    "decisions": [],
}


def _text(renderable: Any, width: int = 150) -> str:
    console = Console(record=True, width=width, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_one_frame() -> None:
    text = _text(top.render(OVERVIEW))
    lines = text.splitlines()
    assert lines[0].startswith("fleetgate top 03:04:05 UTC")
    for part in ("replicas 1/2 healthy", "in flight 12", "queued 5", "req/s 4.25", "out tok/s 310.5"):
        assert part in lines[0]
    assert "TTFT p50 120 ms p99 2.25 s" in lines[0]  # the newest known values
    gpu_a = next(x for x in lines if "gpu-a" in x)
    for cell in ("llama-3-8b", "healthy", "12", "3", "73.4%", "50.0%", "1,234.5"):
        assert cell in gpu_a, cell
    gpu_b = next(x for x in lines if "gpu-b" in x)
    assert "down" in gpu_b and gpu_b.count(" - ") >= 4  # unknown values are dashes, not zeros
    acme = next(x for x in lines if "acme" in x)
    for cell in ("4.25", "900.0", "310.5", "7", "12.345"):
        assert cell in acme, cell
    assert "spend today USD" in text and "throttles 15m" in text
    assert "usage:" not in text


def test_render_shows_a_ledger_problem_and_empty_fleet() -> None:
    text = _text(top.render({**OVERVIEW, "fleet": [], "tenants": [], "usage_error": "usage ledger unavailable"}))
    assert "replicas 0/0 healthy" in text and "usage: usage ledger unavailable" in text


def test_default_url() -> None:
    assert top._default_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert top._default_url("10.1.2.3", 80) == "http://10.1.2.3:80"
    assert top._default_url("::1", 8080) == "http://[::1]:8080"


def test_fetch_rejects_other_schemes_and_dead_gateways() -> None:
    with pytest.raises(top.TopError, match="http://"):
        top.fetch_overview("file:///etc/passwd", "k")
    with pytest.raises(top.TopError, match="cannot connect"):
        top.fetch_overview(f"http://127.0.0.1:{free_port()}", "k", timeout=2)


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    engine = FakeEngine(model="smollm2")
    await engine.start()
    try:
        async with running_gateway([engine.url]) as running:
            ts = attach_dashboard(running)
            ts.sample()
            async with aiohttp.ClientSession() as http:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
                async with http.post(f"{running.url}/v1/chat/completions", json=body, headers=running.headers) as r:
                    assert r.status == 200
            ts.sample()
            yield running
    finally:
        await engine.stop()


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root: keeps `top` a subcommand."""

    top.register(app)
    return app


async def _invoke(*args: str) -> Any:
    # The CLI is synchronous (urllib) and the gateway lives in this event loop: run the CLI in a thread.
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, _cli(), ["top", *args], env={"COLUMNS": "160"})


async def test_top_once_and_json_against_a_gateway(gw: RunningGateway, tmp_path: Path) -> None:
    once = await _invoke("--url", gw.url, "--admin-key", ADMIN_KEY, "--once")
    assert once.exit_code == 0, once.output
    assert "fleetgate top" in once.output and "engine-0" in once.output and "healthy" in once.output
    assert "demo" in once.output
    as_json = await _invoke("--url", gw.url, "--admin-key", ADMIN_KEY, "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["object"] == "dashboard.overview" and data["fleet"][0]["id"] == "engine-0"
    # Defaults from the config file: gateway host/port and the admin key.
    port = gw.url.rsplit(":", 1)[1]
    config = tmp_path / "fleetgate.yaml"
    config.write_text(f"gateway:\n  host: 0.0.0.0\n  port: {port}\n  admin_api_key: {ADMIN_KEY}\n")
    from_config = await _invoke("--config", str(config), "--once")
    assert from_config.exit_code == 0, from_config.output
    assert "engine-0" in from_config.output


async def test_top_with_a_wrong_key_fails_clearly(gw: RunningGateway) -> None:
    result = await _invoke("--url", gw.url, "--admin-key", "not-the-admin-key", "--once")
    assert result.exit_code == 1
    assert "HTTP 401" in result.output and "admin key" in result.output
    not_a_gateway = await _invoke("--url", f"{gw.url}/v1", "--admin-key", ADMIN_KEY, "--json")
    assert not_a_gateway.exit_code == 1


async def test_live_view_refreshes(gw: RunningGateway) -> None:
    console = Console(record=True, width=150, force_terminal=False, color_system=None)
    await asyncio.to_thread(top.run_live, gw.url, ADMIN_KEY, 0.2, console, 2)
    text = console.export_text()
    assert "engine-0" in text and "fleetgate top" in text
    dead = Console(record=True, width=150, force_terminal=False, color_system=None)
    await asyncio.to_thread(top.run_live, f"http://127.0.0.1:{free_port()}", ADMIN_KEY, 0.2, dead, 1)
    frame = dead.export_text()
    assert "cannot connect" in frame and "(retrying)" in frame
