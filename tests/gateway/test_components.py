"""A real gateway's lifespan: its components stop in reverse of their start, and a component that fails to start
stops those started before it, in reverse, before the error reaches the server."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.config import Config
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.gateway.app import build_app
from fleetgate.gateway.build import build_gateway
from fleetgate.gateway.parts import Gateway


def _gateway(tmp_path: Path) -> Gateway:
    config = Config.model_validate(
        {
            "gateway": {"port": 0},
            "local": {"replicas": 0},
            "database": {"url": f"sqlite:///{tmp_path}/fleetgate.db"},
            "metering": {"outbox_dir": f"{tmp_path}/outbox", "fsync_interval": 0},
        }
    )
    return build_gateway(config, ReplicaRegistry([]))


def _spied(gateway: Gateway) -> dict[str, tuple[Any, str, str]]:
    """Components by name: the part, its start method, its stop method (the real ones, spied on below)."""
    fleet, tenancy, metering, serving = gateway.fleet, gateway.tenancy, gateway.metering, gateway.serving
    return {
        "tenant keys": (tenancy.gate.auth, "start", "stop"),
        "price books": (tenancy.gate, "start", "stop"),
        "engine client": (fleet.client, "start", "close"),
        "I/O log": (metering.iolog, "start", "stop"),
        "outbox": (metering.outbox, "open", "close"),
        "flusher": (metering.flusher, "start", "stop"),
        "capture": (metering.capture, "start", "stop"),
        "health checks": (fleet.health, "start", "stop"),
        "time series": (serving.timeseries, "start", "stop"),
        "metrics scraper": (fleet.scraper, "start", "stop"),
        "adapter pool": (fleet.adapters, "start", "stop"),
    }


def _record(monkeypatch: pytest.MonkeyPatch, gateway: Gateway) -> list[tuple[str, str]]:
    """Spy on each component's real start and stop; the list fills with (what, name) as they are called."""
    events: list[tuple[str, str]] = []

    def spy(part: Any, method: str, what: str, name: str) -> None:
        real = getattr(part, method)
        if inspect.iscoroutinefunction(real):

            async def async_spy(*args: Any, **kwargs: Any) -> Any:
                events.append((what, name))
                return await real(*args, **kwargs)

            monkeypatch.setattr(part, method, async_spy)
        else:

            def sync_spy(*args: Any, **kwargs: Any) -> Any:
                events.append((what, name))
                return real(*args, **kwargs)

            monkeypatch.setattr(part, method, sync_spy)

    for name, (part, start, stop) in _spied(gateway).items():
        spy(part, start, "start", name)
        spy(part, stop, "stop", name)
    return events


async def _lifespan(gateway: Gateway) -> AsyncIterator[None]:
    app = build_app(gateway).app  # the app behind the completion paths' fast lane owns the lifespan
    async with app.router.lifespan_context(app):
        yield


def _names(events: list[tuple[str, str]], what: str) -> list[str]:
    return [name for w, name in events if w == what]


async def test_components_stop_in_reverse_of_their_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = _gateway(tmp_path)
    events = _record(monkeypatch, gateway)
    async for _ in _lifespan(gateway):
        assert not _names(events, "stop")
        assert gateway.metering.flusher.running
    started = _names(events, "start")
    assert set(started) == set(_spied(gateway))
    # The capture writes its last records to the outbox, then the flusher delivers them, then the outbox closes.
    assert started.index("outbox") < started.index("flusher") < started.index("capture")
    assert _names(events, "stop") == started[::-1]
    assert not gateway.metering.flusher.running


async def test_a_component_that_fails_to_start_stops_those_before_it_in_reverse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = _gateway(tmp_path)
    events = _record(monkeypatch, gateway)

    async def unreachable() -> None:
        raise RuntimeError("scrape failed at start")

    monkeypatch.setattr(gateway.fleet.scraper, "scrape_all", unreachable)  # the scraper's start fails halfway
    with pytest.raises(RuntimeError, match="scrape failed at start"):
        async for _ in _lifespan(gateway):
            pytest.fail("the gateway must not serve when a component failed to start")
    started = _names(events, "start")
    assert "engine client" in started and "flusher" in started  # the failure came well into the start
    assert "metrics scraper" not in started and "adapter pool" not in started
    assert _names(events, "stop") == started[::-1]
    assert not gateway.metering.flusher.running
