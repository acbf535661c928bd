"""Discovery: the static source, and Kubernetes pod listing replayed from recorded API answers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fleetgate.config import EngineEndpoint
from fleetgate.fleet.discovery import (
    DiscoveryError,
    DiscoveryLoop,
    KubernetesDiscovery,
    ReplicaSpec,
    StaticDiscovery,
    sync_registry,
)
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from tests.fakes import free_port

RECORDED = Path(__file__).parent / "recorded"
PAGE1 = json.loads((RECORDED / "k8s_pods_page1.json").read_text())
PAGE2 = json.loads((RECORDED / "k8s_pods_page2.json").read_text())


class _ApiServer:
    """Answers `GET /api/v1/namespaces/{ns}/pods` with the recorded pages and remembers what was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        self.status = 200

    async def pods(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query), request.headers.get("authorization")))
        if self.status != 200:
            return web.json_response({"kind": "Status", "status": "Failure", "code": self.status}, status=self.status)
        page = PAGE2 if request.query.get("continue") else PAGE1
        return web.json_response(page)


@pytest.fixture
async def api() -> AsyncIterator[tuple[_ApiServer, str]]:
    server = _ApiServer()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods", server.pods)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_kubernetes_keeps_running_ready_pods(api: tuple[_ApiServer, str]) -> None:
    server, base = api
    discovery = KubernetesDiscovery(base, "llm", "app.kubernetes.io/part-of=fleetgate", "http", token="sa-token")
    try:
        specs = await discovery.list()
    finally:
        await discovery.close()
    # vllm-1 not Ready, vllm-2 Pending, vllm-3 terminating, metrics-only-0 lacks the `http` port: all left out.
    assert [s.id for s in specs] == ["vllm-0", "llama-0"]
    vllm, llama = specs
    assert vllm == ReplicaSpec(
        id="vllm-0",
        url="http://10.244.1.17:8000",
        kind="vllm",
        models=frozenset({"smollm2"}),
        gpu_type="h100",
        labels=vllm.labels,
    )
    assert vllm.labels["fleetgate.io/gpu-type"] == "h100"
    assert (llama.kind, llama.url, llama.gpu_type) == ("llamacpp", "http://10.244.3.4:8080", "unknown")
    assert llama.adapters == {"support-bot", "sql"}
    # Two pages: the second asked with the first's continue token; selector, limit and token sent each time.
    (path1, query1, auth1), (path2, query2, _) = server.requests
    assert path1 == path2 == "/api/v1/namespaces/llm/pods"
    assert query1 == {"labelSelector": "app.kubernetes.io/part-of=fleetgate", "limit": "500"}
    assert query2["continue"] == PAGE1["metadata"]["continue"]
    assert auth1 == "Bearer sa-token"


async def test_kubernetes_token_file_is_read_each_time(api: tuple[_ApiServer, str], tmp_path: Path) -> None:
    server, base = api
    token = tmp_path / "token"
    token.write_text("first\n")
    discovery = KubernetesDiscovery(base, "llm", "a=b", token_file=token)
    try:
        await discovery.list()
        token.write_text("rotated\n")
        await discovery.list()
    finally:
        await discovery.close()
    assert [auth for _, _, auth in server.requests] == ["Bearer first"] * 2 + ["Bearer rotated"] * 2


async def test_kubernetes_errors_are_discovery_errors(api: tuple[_ApiServer, str]) -> None:
    server, base = api
    server.status = 403
    discovery = KubernetesDiscovery(base, "llm", "a=b")
    try:
        with pytest.raises(DiscoveryError, match="403"):
            await discovery.list()
    finally:
        await discovery.close()
    unreachable = KubernetesDiscovery(f"http://127.0.0.1:{free_port()}", "llm", "a=b", timeout=1.0)
    try:
        with pytest.raises(DiscoveryError, match="failed"):
            await unreachable.list()
    finally:
        await unreachable.close()


def test_in_cluster_needs_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DiscoveryError, match="KUBERNETES_SERVICE_HOST"):
        KubernetesDiscovery.in_cluster("a=b")


async def test_static_discovery_matches_config_ids() -> None:
    engines = [
        EngineEndpoint(url="http://127.0.0.1:9001/v1", kind="vllm", models=["m"]),
        EngineEndpoint(url="http://127.0.0.1:9002", id="named", gpu_type="l4"),
    ]
    specs = await StaticDiscovery(engines).list()
    assert [(s.id, s.url, s.kind, s.gpu_type) for s in specs] == [
        ("engine-0", "http://127.0.0.1:9001", "vllm", "unknown"),
        ("named", "http://127.0.0.1:9002", "openai", "l4"),
    ]


def test_sync_adds_updates_and_removes_only_its_own() -> None:
    local = Replica(id="local-0", url="http://127.0.0.1:1", healthy=True)
    registry = ReplicaRegistry([local])
    owned: set[str] = set()
    a = ReplicaSpec(id="a", url="http://10.0.0.1:8000", kind="vllm", models=frozenset({"m"}))
    b = ReplicaSpec(id="b", url="http://10.0.0.2:8000", kind="vllm")
    assert sync_registry(registry, [a, b], owned) == (2, 0)
    replica_a = registry.get("a")
    assert replica_a is not None and replica_a.models == {"m"} and not replica_a.healthy
    replica_a.healthy = True
    moved = ReplicaSpec(id="a", url="http://10.0.0.9:8000", kind="vllm", gpu_type="h100")
    assert sync_registry(registry, [moved], owned) == (0, 1)
    assert registry.get("b") is None and registry.get("local-0") is local  # not ours: untouched
    # New address: health must be proven again; models it had are kept when the source names none.
    assert (replica_a.url, replica_a.healthy, replica_a.gpu_type, replica_a.models) == (
        "http://10.0.0.9:8000",
        False,
        "h100",
        {"m"},
    )


class _Flaky:
    def __init__(self) -> None:
        self.fail = False
        self.specs = [ReplicaSpec(id="a", url="http://10.0.0.1:8000")]

    async def list(self) -> builtins.list[ReplicaSpec]:
        if self.fail:
            raise DiscoveryError("api down")
        return self.specs


async def test_loop_keeps_replicas_when_the_source_fails() -> None:
    registry = ReplicaRegistry()
    source = _Flaky()
    removed: list[str] = []
    loop = DiscoveryLoop(source, registry, interval=60, on_removed=removed.append)
    assert await loop.refresh()
    source.fail = True
    assert not await loop.refresh()
    assert [r.id for r in registry.all()] == ["a"] and loop.failures == 1
    source.fail = False
    source.specs = []
    assert await loop.refresh()
    assert registry.all() == [] and removed == ["a"]


async def test_loop_start_stop() -> None:
    registry = ReplicaRegistry()
    loop = DiscoveryLoop(_Flaky(), registry, interval=0.01)
    loop.start()
    for _ in range(100):
        if registry.all():
            break
        await asyncio.sleep(0.01)
    await loop.stop()
    assert [r.id for r in registry.all()] == ["a"]
