"""Metrics scraping: parsing each engine's recorded `/metrics`, staleness, and the scraper against a local server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fleetgate.config import GatewayConfig
from fleetgate.engines.llamacpp import METRICS as LLAMACPP_METRICS
from fleetgate.engines.sglang import METRICS as SGLANG_METRICS
from fleetgate.engines.vllm import METRICS as VLLM_METRICS
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.metrics import ReplicaMetrics, parse_metrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.fleet.scraper import MetricsScraper
from tests.fakes import free_port

RECORDED = Path(__file__).parent / "recorded"


def _text(name: str) -> str:
    return (RECORDED / name).read_text()


def test_llamacpp_busy_recording() -> None:
    m = parse_metrics(LLAMACPP_METRICS, _text("llamacpp_busy.metrics"), scraped_at=1.0, total_slots=2)
    assert (m.running, m.waiting) == (2, 2)
    assert m.kv_usage is None  # llama.cpp has no KV gauge ...
    assert m.pressure == 1.0  # ... so 2 busy + 2 deferred on 2 slots reads as full
    assert (m.prompt_tokens, m.cached_prompt_tokens, m.generation_tokens) == (56, 0, 0)


def test_llamacpp_idle_recording_adds_cached_tokens_back() -> None:
    m = parse_metrics(LLAMACPP_METRICS, _text("llamacpp_idle.metrics"), scraped_at=1.0, total_slots=2)
    assert (m.running, m.waiting, m.pressure) == (0, 0, 0.0)
    # prompt_tokens_total (22) excludes the 20 cached tokens: all prompt tokens = 42, of which 20 hit the cache.
    assert (m.prompt_tokens, m.prefix_queries, m.prefix_hits) == (42, 42, 20)
    assert m.prefix_hit_ratio == pytest.approx(20 / 42)
    assert m.generation_tokens == 16


def test_llamacpp_without_slot_count_has_no_pressure() -> None:
    m = parse_metrics(LLAMACPP_METRICS, _text("llamacpp_busy.metrics"), scraped_at=1.0)
    assert m.pressure is None


def test_vllm_labelled_samples() -> None:
    m = parse_metrics(VLLM_METRICS, _text("vllm.metrics"), scraped_at=1.0)
    assert (m.running, m.waiting, m.kv_usage, m.pressure) == (2, 4, 0.4375, 0.4375)
    assert (m.prefix_queries, m.prefix_hits) == (5504, 2560)
    assert (m.prompt_tokens, m.cached_prompt_tokens, m.generation_tokens) == (5504, 2560, 1217)


def test_vllm_data_parallel_engines_add_up() -> None:
    m = parse_metrics(VLLM_METRICS, _text("vllm_dp2.metrics"), scraped_at=1.0)
    assert (m.running, m.waiting) == (4, 2)
    assert m.kv_usage == pytest.approx(0.5)  # mean of the engines' KV usage
    assert (m.prefix_queries, m.prefix_hits) == (4000, 2000)
    assert m.prompt_tokens is None  # not in this scrape: unknown, not zero


def test_sglang_names() -> None:
    m = parse_metrics(SGLANG_METRICS, _text("sglang.metrics"), scraped_at=1.0)
    assert (m.running, m.waiting, m.kv_usage) == (7, 3, 0.28)
    # SGLang has no prefix query counter: prompt tokens are the queries, cached tokens the hits.
    assert (m.prefix_queries, m.prefix_hits) == (81289, 40112)
    assert m.generation_tokens == 75575


def test_garbage_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_metrics(VLLM_METRICS, 'vllm:num_requests_waiting{engine="0" 1\n', scraped_at=1.0)


def test_freshness_bound() -> None:
    m = ReplicaMetrics(scraped_at=100.0)
    assert m.fresh(now=105.0, stale_after=5.0)
    assert not m.fresh(now=105.1, stale_after=5.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Engines:
    """One local server answering as a llama-server and a vLLM replica (by path prefix)."""

    def __init__(self) -> None:
        self.metrics = {"llama": _text("llamacpp_busy.metrics"), "vllm": _text("vllm.metrics")}
        self.status = 200
        self.props_calls = 0

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics[request.match_info["who"]], status=self.status)

    async def handle_props(self, request: web.Request) -> web.Response:
        self.props_calls += 1
        return web.Response(text=_text("llamacpp_props.json"), content_type="application/json")


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Engines, str, EngineClient]]:
    engines = _Engines()
    app = web.Application()
    app.router.add_get("/{who}/metrics", engines.handle_metrics)
    app.router.add_get("/{who}/props", engines.handle_props)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = EngineClient(GatewayConfig())
    await client.start()
    yield engines, f"http://127.0.0.1:{port}", client
    await client.close()
    await runner.cleanup()


async def test_scraper_fills_replicas_and_marks_stale(served: tuple[_Engines, str, EngineClient]) -> None:
    engines, base, client = served
    llama = Replica(id="l", url=f"{base}/llama", kind="llamacpp")
    vllm = Replica(id="v", url=f"{base}/vllm", kind="vllm")
    plain = Replica(id="o", url=f"{base}/openai", kind="openai")  # no metrics to read
    clock = _Clock()
    scraper = MetricsScraper(ReplicaRegistry([llama, vllm, plain]), client, stale_after=5.0, clock=clock)
    await scraper.scrape_all()
    assert llama.metrics is not None and llama.metrics.total_slots == 2 and llama.metrics.pressure == 1.0
    assert vllm.metrics is not None and vllm.metrics.waiting == 4
    assert plain.metrics is None
    assert scraper.is_fresh(llama) and scraper.is_fresh(vllm)

    # The engine stops answering: the old snapshot stays but ages into staleness.
    engines.status = 503
    clock.now += 6.0
    await scraper.scrape_all()
    assert scraper.errors == {"l": 1, "v": 1}
    assert vllm.metrics.scraped_at == 1000.0
    assert not scraper.is_fresh(vllm)

    # It answers again: fresh again; /props was read once (the slot count is fixed while the URL is).
    engines.status = 200
    engines.metrics["vllm"] = _text("vllm_dp2.metrics")
    await scraper.scrape_all()
    assert scraper.is_fresh(vllm) and vllm.metrics is not None and vllm.metrics.running == 4
    assert engines.props_calls == 1


async def test_scraper_loop_start_stop(served: tuple[_Engines, str, EngineClient]) -> None:
    _, base, client = served
    replica = Replica(id="v", url=f"{base}/vllm", kind="vllm")
    scraper = MetricsScraper(ReplicaRegistry([replica]), client, interval=0.05)
    scraper.start()
    for _ in range(100):
        if replica.metrics is not None:
            break
        await asyncio.sleep(0.01)
    await scraper.stop()
    assert replica.metrics is not None
