"""Engines at https://, under a path prefix, behind an API key: served and metered, or unhealthy with the reason."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetgate.config import EngineEndpoint, GatewayConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.fleet.client import EngineClient, engine_ssl_context
from fleetgate.fleet.discovery import KubernetesDiscovery, StaticDiscovery, sync_registry
from fleetgate.fleet.health import HealthChecker
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.fleet.upstream import ConnectFailed, UpstreamPool
from fleetgate.gateway.build import remote_replicas
from tests.fleet.secure_engine import SecureEngine, self_signed
from tests.gateway_harness import running_gateway
from tests.waiting import wait_until

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEY_ENV = "FG_TEST_ENGINE_KEY"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One self-signed certificate for 127.0.0.1 per module."""
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def secure(certificate: tuple[Path, Path]) -> AsyncIterator[SecureEngine]:
    """The fake engine at https://127.0.0.1:<port>/some/prefix, needing its key on /v1 paths."""
    engine = SecureEngine(model="smollm2", cert=certificate[0], key_file=certificate[1])
    await engine.start()
    yield engine
    await engine.stop()


def _replica(engine: SecureEngine, key: str | None, ca: Path | None) -> Replica:
    return Replica(id="secure", url=engine.url, api_key=key, ca_file=ca)


async def _check(replica: Replica) -> None:
    registry = ReplicaRegistry([replica])
    client = EngineClient(GatewayConfig(), registry)
    await client.start()
    try:
        await HealthChecker(registry, client, interval=60, timeout=5).check(replica)
    finally:
        await client.close()


async def test_hot_path_speaks_tls_joins_the_prefix_and_sends_the_key(secure: SecureEngine) -> None:
    replica = _replica(secure, secure.api_key, secure.cert)
    registry = ReplicaRegistry([replica])
    client = EngineClient(GatewayConfig(), registry)
    pool = UpstreamPool(2, 5, ssl_context=engine_ssl_context(registry), api_key_for=client.api_key_for)
    try:
        for _ in range(2):
            resp = await pool.post(replica.url, "/v1/chat/completions", json.dumps(CHAT).encode(), 5)
            body = await resp.read()
            resp.close()
            assert resp.status == 200, body
            assert json.loads(body)["choices"][0]["message"]["content"] == "hello"
        assert secure.paths == ["/some/prefix/v1/chat/completions"] * 2 and secure.refused == 0
        assert pool.opened == 1  # the TLS connection is kept alive and reused
    finally:
        pool.close()


async def test_a_certificate_nobody_trusts_is_refused_with_the_reason(secure: SecureEngine) -> None:
    pool = UpstreamPool(2, 5)  # system CAs only
    with pytest.raises(ConnectFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await pool.post(secure.url, "/v1/chat/completions", b"{}", 5)
    assert secure.served == 0


async def test_health_checks_pass_through_tls_prefix_and_key(secure: SecureEngine) -> None:
    replica = _replica(secure, secure.api_key, secure.cert)
    await _check(replica)
    assert replica.healthy, replica.last_error
    assert replica.models == {"smollm2"}
    assert "/some/prefix/v1/models" in secure.paths and secure.refused == 0
    assert secure.served == 0  # the route probe is refused while parsing: no completion ran


async def test_a_wrong_engine_key_makes_the_replica_unhealthy_with_a_reason_that_hides_it(
    secure: SecureEngine, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-key-5b1e0d"
    replica = _replica(secure, wrong, secure.cert)
    replica.healthy = True  # was fine: the warning names why it no longer is
    with caplog.at_level(logging.DEBUG):
        await _check(replica)
    assert not replica.healthy
    assert replica.last_error is not None and "refused our API key" in replica.last_error
    assert "401" in replica.last_error
    assert wrong not in replica.last_error and wrong not in caplog.text and secure.api_key not in caplog.text


async def test_no_key_at_all_is_unhealthy_too(secure: SecureEngine) -> None:
    replica = _replica(secure, None, secure.cert)
    await _check(replica)
    assert not replica.healthy and "refused our API key" in (replica.last_error or "")


async def test_a_model_list_without_a_chat_endpoint_is_unhealthy(certificate: tuple[Path, Path]) -> None:
    # /v1/models answers, but a completion would get 404 (a proxy routing only part of the prefix): not healthy.
    engine = SecureEngine(model="smollm2", cert=certificate[0], key_file=certificate[1], chat_route=False)
    await engine.start()
    try:
        replica = _replica(engine, engine.api_key, engine.cert)
        await _check(replica)
        assert not replica.healthy
        assert "path prefix" in (replica.last_error or "") and "404" in (replica.last_error or "")
    finally:
        await engine.stop()


async def test_gateway_serves_and_meters_an_https_prefixed_keyed_engine(
    secure: SecureEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, secure.api_key)
    engines = [{"url": secure.url, "id": "secure", "api_key_env": KEY_ENV, "ca_file": str(secure.cert)}]
    async with (
        running_gateway([], sections={"engines": engines}) as gw,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        await wait_until(lambda: gw.gateway.registry.candidates("smollm2") != [], what="the engine to be healthy")
        async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=gw.headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["choices"][0]["message"]["content"] == "hello"
        async with http.post(
            f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=gw.headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            text = (await resp.read()).decode()
        assert "t0 " in text and text.rstrip().endswith("data: [DONE]")
        assert secure.served == 2 and secure.refused == 0

        async def metered() -> bool:
            async with http.get(f"{gw.url}/v1/usage", headers=gw.headers) as usage:
                totals = (await usage.json())["totals"]
            return bool(totals["requests"] == 2)

        await wait_until(metered, what="both requests in the ledger")
        async with http.get(f"{gw.url}/v1/usage", headers=gw.headers) as usage:
            totals = (await usage.json())["totals"]
        # The fake engine reports 7 prompt and 4 completion tokens per request.
        assert (totals["prompt_tokens"], totals["output_tokens"]) == (14, 8)


def test_the_engine_key_is_never_shown(tmp_path: Path) -> None:
    endpoint = EngineEndpoint(url="https://127.0.0.1:1/p", api_key="shh-secret-value")
    replica = remote_replicas([endpoint])[0]
    assert replica.api_key == "shh-secret-value"
    for shown in (repr(endpoint), str(endpoint.model_dump()), repr(replica), json.dumps(replica.to_json())):
        assert "shh-secret-value" not in shown


def test_an_unset_key_variable_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FG_TEST_UNSET_ENGINE_KEY", raising=False)
    endpoint = EngineEndpoint(url="https://127.0.0.1:1", id="vllm-0", api_key_env="FG_TEST_UNSET_ENGINE_KEY")
    with pytest.raises(ConfigError, match="vllm-0: api_key_env names FG_TEST_UNSET_ENGINE_KEY, which is not set"):
        remote_replicas([endpoint])
    with pytest.raises(ValueError, match="api_key or api_key_env"):
        EngineEndpoint(url="https://127.0.0.1:1", api_key="k", api_key_env="K")
    with pytest.raises(ValueError, match="without credentials"):
        EngineEndpoint(url="https://user:pw@127.0.0.1:1")


def test_an_unreadable_ca_file_is_refused_at_start(tmp_path: Path) -> None:
    replica = Replica(id="e", url="https://127.0.0.1:1", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"engine e: ca_file .*missing\.pem cannot be used"):
        engine_ssl_context(ReplicaRegistry([replica]))


async def test_discovery_carries_prefix_key_and_ca(tmp_path: Path) -> None:
    endpoint = EngineEndpoint(url="https://10.0.0.9:8443/engine/v1", id="e", api_key="k-1", ca_file=tmp_path / "ca")
    registry, owned = ReplicaRegistry(), set[str]()
    sync_registry(registry, await StaticDiscovery([endpoint]).list(), owned)
    replica = registry.get("e")
    assert replica is not None
    assert (replica.url, replica.api_key, replica.ca_file) == ("https://10.0.0.9:8443/engine", "k-1", tmp_path / "ca")
    assert registry.owner_of("https://10.0.0.9:8443/engine/v1/models") is replica
    assert registry.owner_of("https://10.0.0.9:8443/engineX/v1/models") is None


def test_kubernetes_pods_can_name_a_path_prefix_and_share_a_key() -> None:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "vllm-0",
            "annotations": {"fleetgate.io/scheme": "https", "fleetgate.io/path-prefix": "/engine/"},
        },
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {"phase": "Running", "podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    spec = KubernetesDiscovery("https://k8s", "ns", "app=vllm", api_key="k-2")._spec(pod)
    assert spec is not None and (spec.url, spec.api_key) == ("https://10.1.2.3:8000/engine", "k-2")
    del pod["metadata"]["annotations"]
    spec = KubernetesDiscovery("https://k8s", "ns", "app=vllm")._spec(pod)
    assert spec is not None and (spec.url, spec.api_key) == ("http://10.1.2.3:8000", None)
