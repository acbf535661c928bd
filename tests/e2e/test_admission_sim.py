"""Admission against real processes: two `sim-engine` replicas behind a `fleetgate up` gateway, two tenants.

A noisy tenant keeps 10x its fair share of the fleet in flight while a quiet tenant sends a steady trickle: every
quiet request is served, the noisy excess is queued or refused on purpose (429/503 with Retry-After, never a 500
or a hung connection), and the gateway's queue and shed metrics move. A request that cannot fit the engines'
context window is refused with 400 before any engine sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.conftest import FLEETGATE
from tests.e2e.sim_fleet import spawn, stop, wait_ready
from tests.fakes import free_port
from tests.keys import ADMIN_KEY, KEY_ENV

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SIM = [sys.executable, "-m", "fleetgate.cli.sim"]
REPLICAS = 2
SLOTS = 2  # the simulator's --max-num-seqs, and the gateway's max in flight per replica
FAIR_SHARE = REPLICAS * SLOTS // 2  # two tenants of equal weight share the fleet's slots
NOISY_WORKERS = 10 * FAIR_SHARE  # requests the noisy tenant keeps in flight: 10x its share
MAX_QUEUE = 10  # so the noisy excess (20 - 4 running) overflows the queue and is refused, not only queued
LOAD_SECONDS = 6.0
QUIET_EVERY = 0.25  # seconds between quiet requests (open loop: it does not wait for the previous answer)
CALL_TIMEOUT = 15.0  # every client call is bounded: a hung connection fails the test instead of hanging it
BODY: dict[str, Any] = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
    "stream": True,
}
SHED_REASONS = ("queue_full", "evicted", "deadline", "kv_pressure")


@dataclass
class Call:
    """What one client call got back."""

    status: int | str  # an HTTP status, or "timeout" / "error: ..." when no complete answer came
    retry_after: str | None = None
    complete: bool = False  # a 200 stream ended with `data: [DONE]`
    error: str = ""  # the error message of a refusal, for failure reports


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """2 sim-engine replicas (2 slots each, 5x real time): their base URLs."""
    tmp = tmp_path_factory.mktemp("admission_sim_engines")
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for index in range(REPLICAS):
            port = free_port()
            log = tmp / f"sim{index}.log"
            args = [*SIM, "--port", str(port), "--profile", "smollm2-llamacpp-local"]
            args += ["--time-scale", "5", "--max-num-seqs", str(SLOTS)]
            procs.append(spawn(args, log))
            urls.append(f"http://127.0.0.1:{port}")
            wait_ready(f"{urls[-1]}/health", procs[-1], log)
        yield urls
    finally:
        stop(procs)


@contextlib.contextmanager
def _gateway(tmp: Path, engines: list[str]) -> Iterator[str]:
    """A `fleetgate up --engine ...` subprocess with tight admission settings and its own state dir: its URL.

    Everything else is the shipped default, the DRR quantum included: with a quantum much larger than these
    ~23-token requests (it was 4096), a backlogged tenant is served a whole quantum of requests per turn and the
    quiet tenant's requests pile up behind it until they are refused as `queue_full`.
    """
    port = free_port()
    env = {
        **os.environ,
        "FLEETGATE_STATE_DIR": str(tmp),
        "FLEETGATE_RUN_DIR": str(tmp / "run"),
        **KEY_ENV,
        "FLEETGATE_ADMISSION__MAX_IN_FLIGHT_PER_REPLICA": str(SLOTS),
        "FLEETGATE_ADMISSION__MAX_QUEUE": str(MAX_QUEUE),
        "FLEETGATE_ADMISSION__QUEUE_TIMEOUT": "{interactive: 5, standard: 5, batch: 5}",
    }
    args = [*FLEETGATE, "up", *(a for url in engines for a in ("--engine", url)), "--port", str(port)]
    log = tmp / "gateway.log"
    proc = spawn([*args, "--no-self-test"], log, env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log, ready=f"engine-{len(engines) - 1}", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([proc])


@pytest.fixture(scope="module")
def gateway(engines: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway in front of `engines`."""
    with _gateway(tmp_path_factory.mktemp("admission_sim_gw"), engines) as url:
        yield url


async def _tenant_key(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, str]:
    """Create a tenant and a key through the admin API; the key's Authorization header."""
    async with http.put(f"{url}/admin/tenants/{name}", json={"weight": 1}, headers=ADMIN) as resp:
        assert resp.status in (200, 201), await resp.text()
    async with http.post(f"{url}/admin/tenants/{name}/keys", json={}, headers=ADMIN) as resp:
        assert resp.status in (200, 201), await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def _call(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]) -> Call:
    """One chat completion, bounded by CALL_TIMEOUT whatever happens."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
                raw = await resp.read()
                error = "" if resp.status == 200 else raw.decode(errors="replace")[:300]
                return Call(resp.status, resp.headers.get("retry-after"), raw.endswith(b"data: [DONE]\n\n"), error)
    except TimeoutError:
        return Call("timeout")
    except aiohttp.ClientError as exc:
        return Call(f"error: {exc!r}")


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The gateway's /metrics, summed per metric name (labels dropped)."""
    async with http.get(f"{url}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


async def _shed_rejections(http: aiohttp.ClientSession, url: str) -> float:
    """fleetgate_limit_rejections_total for admission's reasons (queue_full, evicted, deadline, kv_pressure)."""
    async with http.get(f"{url}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fleetgate_limit_rejections_total{") and any(f'"{r}"' in line for r in SHED_REASONS)
    )


@dataclass
class Overload:
    """What the overload scenario observed."""

    quiet: list[Call]
    noisy: list[Call]
    peak_depth: float  # the largest fleetgate_queue_depth (summed) sampled during the load
    shed: float  # fleetgate_shed_total added during the load
    rejections: float  # fleetgate_limit_rejections_total added for admission's reasons
    depth_after: float


async def _overload(url: str, prefix: str) -> Overload:
    """The noisy tenant keeps 10x its share in flight for LOAD_SECONDS while the quiet tenant trickles."""
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=NOISY_WORKERS + 40)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        noisy = await _tenant_key(http, url, f"{prefix}-noisy")
        quiet = await _tenant_key(http, url, f"{prefix}-quiet")
        before = await _metrics(http, url)
        rejections_before = await _shed_rejections(http, url)
        stop_at = time.monotonic() + LOAD_SECONDS
        noisy_calls: list[Call] = []
        peak_depth = 0.0

        async def noisy_worker() -> None:
            # An impolite client: it retries after 0.1 s whatever Retry-After says, to keep the pressure on.
            while time.monotonic() < stop_at:
                noisy_calls.append(call := await _call(http, url, noisy, BODY))
                if call.status != 200:
                    await asyncio.sleep(0.1)

        async def quiet_trickle() -> list[Call]:
            tasks = []
            while time.monotonic() < stop_at:
                tasks.append(asyncio.create_task(_call(http, url, quiet, BODY)))
                await asyncio.sleep(QUIET_EVERY)
            return list(await asyncio.gather(*tasks))

        async def sample_depth() -> None:
            nonlocal peak_depth
            while time.monotonic() < stop_at:
                peak_depth = max(peak_depth, (await _metrics(http, url)).get("fleetgate_queue_depth", 0.0))
                await asyncio.sleep(0.2)

        async with asyncio.timeout(LOAD_SECONDS + 2 * CALL_TIMEOUT):
            quiet_calls, *_ = await asyncio.gather(
                quiet_trickle(), sample_depth(), *(noisy_worker() for _ in range(NOISY_WORKERS))
            )
        after = await _metrics(http, url)
        rejections = await _shed_rejections(http, url) - rejections_before
    shed = after.get("fleetgate_shed_total", 0.0) - before.get("fleetgate_shed_total", 0.0)
    return Overload(quiet_calls, noisy_calls, peak_depth, shed, rejections, after.get("fleetgate_queue_depth", 0.0))


def _assert_quiet_served(run: Overload) -> None:
    """Every quiet request of the trickle got a complete 200."""
    statuses = Counter(c.status for c in run.quiet)
    assert len(run.quiet) >= LOAD_SECONDS / QUIET_EVERY - 2, statuses
    assert statuses == {200: len(run.quiet)}, (statuses, [c for c in run.quiet if c.status != 200][:3])
    assert all(c.complete for c in run.quiet)


async def test_noisy_tenant_is_refused_on_purpose_and_quiet_one_is_served(gateway: str) -> None:
    run = await _overload(gateway, "e2e")
    noisy = Counter(c.status for c in run.noisy)
    print(f"quiet {Counter(c.status for c in run.quiet)} noisy {noisy} peak queue depth {run.peak_depth:.0f}")
    _assert_quiet_served(run)  # no quiet request is shed
    # The noisy excess is queued or refused on purpose: never a 500, a dropped connection or a hang.
    assert set(noisy) <= {200, 429, 503}, (noisy, [c for c in run.noisy if c.status not in (200, 429, 503)][:3])
    assert noisy[200] > 0 and noisy[429] + noisy[503] > 0, noisy
    assert all(c.complete for c in run.noisy if c.status == 200)
    refused = [c for c in run.noisy if c.status != 200]
    assert all(c.retry_after is not None and float(c.retry_after) >= 1 for c in refused), refused[:3]
    # The gateway shows it: the queue filled, and the shed and rejection counters moved by exactly the refusals.
    assert run.peak_depth > 0
    assert run.shed == len(refused), (run.shed, noisy)
    assert run.rejections == len(refused), (run.rejections, noisy)
    assert run.depth_after == 0  # everything queued was served or refused


async def test_context_overflow_is_400_before_any_engine(engines: list[str], gateway: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as http:
        headers = await _tenant_key(http, gateway, "longform")
        async with http.get(f"{engines[0]}/v1/models") as resp:
            context = (await resp.json())["data"][0]["max_model_len"]  # the simulator's default: 4096

        async def engine_requests() -> int:
            total = 0
            for engine in engines:
                async with http.get(f"{engine}/sim/state") as resp:
                    total += (await resp.json())["fault_requests"]  # every inference request an engine received
            return total

        seen = await engine_requests()
        body = {**BODY, "stream": False, "max_tokens": context}  # the prompt's own tokens push it over
        async with http.post(f"{gateway}/v1/chat/completions", json=body, headers=headers) as resp:
            status, error = resp.status, orjson.loads(await resp.read())["error"]
        assert status == 400, error
        assert error["param"] == "max_tokens" and f"context window of {context} tokens" in error["message"], error
        assert await engine_requests() == seen  # refused by the gateway: no engine saw it

        fits = {**BODY, "stream": False, "max_tokens": 16}
        async with http.post(f"{gateway}/v1/chat/completions", json=fits, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        assert await engine_requests() == seen + 1  # the counter does move when an engine is reached
