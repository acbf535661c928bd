"""Real `sim-engine` processes behind a real `fleetgate up` gateway: start them, wait for them, read them, stop them.

Shared by the e2e suites that put the gateway in front of simulated vLLM replicas. Everything listens on
127.0.0.1 on free ports; every wait is bounded; every process is stopped by the PID this module started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import FLEETGATE
from tests.fakes import free_port
from tests.keys import ADMIN_KEY, DEMO_KEY, KEY_ENV

SIM = [sys.executable, "-m", "fleetgate.cli.sim"]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DEMO = {"Authorization": f"Bearer {DEMO_KEY}"}  # the demo tenant's key, seeded at start


def get(url: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
    """A bounded GET to 127.0.0.1: (status, body), status None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, ValueError):
        return None, b""


def post(url: str, body: dict[str, Any], timeout: float = 5.0) -> tuple[int, bytes]:
    """A bounded JSON POST: (status, body), also for error statuses."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, ready: str = "", timeout: float = 30.0) -> None:
    """Poll `url` until it answers 200 (with `ready` in its body); fail with the log if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        status, body = get(url)
        if status == 200 and ready.encode() in body:
            return
        time.sleep(0.05)
    pytest.fail(f"{url} not ready within {timeout:.0f}s: {log.read_text()[-2000:]}")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child with its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process we started (by PID), then wait; SIGKILL what does not exit."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def sim_engines(tmp: Path, count: int, args: Sequence[str] = ()) -> Iterator[list[str]]:
    """`count` sim-engine processes with the same extra CLI `args`, loaded (/health 200): their base URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for index in range(count):
            port = free_port()
            procs.append(spawn([*SIM, "--port", str(port), "--seed", str(index), *args], tmp / f"sim{index}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for index, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            wait_ready(f"{url}/health", proc, tmp / f"sim{index}.log")
        yield urls
    finally:
        stop(procs)


def gateway_config(engines: Sequence[str], policy: str = "score", **sections: Any) -> dict[str, Any]:
    """A fleetgate.yaml naming the sim-engines as vLLM engines (`--engine URL` would say `openai`: no scraping)."""
    config: dict[str, Any] = {
        "engines": [{"url": url, "kind": "vllm", "id": f"sim-{i}"} for i, url in enumerate(engines)],
        "routing": {"policy": policy},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@contextlib.contextmanager
def gateway(tmp: Path, config: dict[str, Any], env_extra: dict[str, str] | None = None) -> Iterator[str]:
    """`fleetgate up --config` with its own state and run dirs; waits until every engine is healthy: its URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "fleetgate.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_") or "__" not in k}
    env.update({"FLEETGATE_STATE_DIR": str(tmp), "FLEETGATE_RUN_DIR": str(tmp / "run"), **KEY_ENV, **(env_extra or {})})
    log = tmp / "gateway.log"
    proc = spawn([*FLEETGATE, "up", "--config", str(path), "--port", str(port), "--no-self-test"], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        last = f"sim-{len(config['engines']) - 1}"
        wait_ready(f"{url}/readyz", proc, log, ready=last, timeout=60)
        deadline = time.monotonic() + 15
        while len(json.loads(get(f"{url}/readyz")[1] or b"{}").get("healthy_replicas", [])) < len(config["engines"]):
            if time.monotonic() > deadline:
                pytest.fail(f"not every engine became healthy: {get(url + '/readyz')[1]!r}")
            time.sleep(0.05)
        yield url
    finally:
        stop([proc])


async def tenant_key(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, str]:
    """Create a tenant and a key through the admin API; the key's Authorization header once the gateway takes it."""
    async with http.put(f"{url}/admin/tenants/{name}", json={"weight": 1}, headers=ADMIN) as resp:
        assert resp.status in (200, 201), await resp.text()
    async with http.post(f"{url}/admin/tenants/{name}/keys", json={}, headers=ADMIN) as resp:
        assert resp.status in (200, 201), await resp.text()
        headers = {"Authorization": f"Bearer {(await resp.json())['key']}"}
    deadline = time.monotonic() + 10  # the key cache polls the store
    while True:
        async with http.get(f"{url}/v1/models", headers=headers) as resp:
            if resp.status == 200:
                return headers
        assert time.monotonic() < deadline, f"the key of tenant {name} is not accepted"
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample."""

    name: str
    labels: dict[str, str]
    value: float


def samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample `name` whose labels include `labels`, None if absent."""
    found = [s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels}: {len(found)} samples"
    return found[0] if found else None
