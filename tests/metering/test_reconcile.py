"""Reconcile: the ledger against engine counters, on /metrics text recorded from a real llama-server, a vLLM-shaped
sample, and a live scrape of a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from fleetgate.engines.counters import EngineCounters
from fleetgate.engines.llamacpp import LLAMACPP
from fleetgate.engines.vllm import VLLM as VLLM_DIALECT
from fleetgate.local.reconcile_targets import local_kind
from fleetgate.local.rundir import ProcRecord, RunDir, RunState
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.ledger import SqlLedger, TokenTotals
from fleetgate.metering.reconcile import ReplicaTarget, compare, reconcile
from tests.engines.samples import LLAMACPP_AFTER_3, LLAMACPP_AFTER_ABORT, VLLM

FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]

T0 = datetime(2026, 11, 23, 5, 30, tzinfo=UTC).timestamp()


def ev(n: int, prompt: int, cached: int, completion: int, replica: str = "local-0", at: float = T0) -> UsageEvent:
    return UsageEvent(
        event_id=f"e{n}",
        tenant_id="t",
        key_id="k",
        model="smollm2",
        adapter=None,
        replica_id=replica,
        engine="llamacpp",
        gpu_type="cpu",
        started_at=at + n,
        first_token_at=None,
        ended_at=at + n + 1,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        status="ok",
        usage_source="engine",
        stream=True,
    )


RECORDED = [ev(1, 36, 0, 12), ev(2, 36, 35, 8), ev(3, 33, 7, 20)]
TARGET = ReplicaTarget("local-0", "http://127.0.0.1:1", "llamacpp", T0)


def totals(*events: UsageEvent) -> TokenTotals:
    return TokenTotals(
        len(events),
        sum(e.prompt_tokens for e in events),
        sum(e.cached_tokens for e in events),
        sum(e.completion_tokens for e in events),
    )


def test_llamacpp_drift_zero_on_recorded_metrics() -> None:
    drift = compare(TARGET, totals(*RECORDED), LLAMACPP.token_counters(LLAMACPP_AFTER_3))
    assert (drift.basis, drift.ledger_prompt, drift.engine_prompt, drift.prompt_drift) == ("fresh", 63, 63, 0)
    assert (drift.ledger_completion, drift.engine_completion, drift.completion_drift) == (40, 40, 0)
    assert drift.within(0) and drift.requests == 3


def test_llamacpp_drift_after_an_abort() -> None:
    # The gateway counted the 75 chunks it forwarded; the engine had predicted one more token before cancelling.
    partial = ev(4, 37, 24, 75)
    drift = compare(TARGET, totals(*RECORDED, partial), LLAMACPP.token_counters(LLAMACPP_AFTER_ABORT))
    assert (drift.prompt_drift, drift.completion_drift) == (0, 1)
    assert not drift.within(0) and drift.within(1)
    # An event lost on the way to the ledger shows as the engine's whole count for it.
    lost = compare(TARGET, totals(*RECORDED), LLAMACPP.token_counters(LLAMACPP_AFTER_ABORT))
    assert (lost.prompt_drift, lost.completion_drift) == (13, 76)
    assert lost.to_json()["completion_drift"] == 76


def test_vllm_compares_fresh_tokens_when_it_counts_cached_ones_apart() -> None:
    counters = VLLM_DIALECT.token_counters(VLLM)
    target = ReplicaTarget("vllm-0", "http://127.0.0.1:1", "vllm", T0)
    ledger = TokenTotals(requests=4, prompt_tokens=500, cached_tokens=128, completion_tokens=120)
    assert compare(target, ledger, counters).within(0)
    short = TokenTotals(requests=3, prompt_tokens=450, cached_tokens=128, completion_tokens=100)
    drift = compare(target, short, counters)
    assert (drift.basis, drift.prompt_drift, drift.completion_drift) == ("fresh", 50, 20)


def test_vllm_without_a_cached_counter_compares_totals() -> None:
    plain = "\n".join(line for line in VLLM.splitlines() if "cached" not in line) + "\n"
    drift = compare(
        ReplicaTarget("v", "u", "vllm", T0), TokenTotals(4, 500, 128, 120), VLLM_DIALECT.token_counters(plain)
    )
    assert (drift.basis, drift.ledger_prompt, drift.prompt_drift) == ("total", 500, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def engine_url() -> AsyncIterator[str]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=LLAMACPP_AFTER_3, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_reconcile_scrapes_and_compares(sqlite_url: str, engine_url: str) -> None:
    ledger = await SqlLedger.open(sqlite_url)
    try:
        before_start = ev(9, 1000, 0, 1000, at=T0 - 3600)  # an earlier process's traffic: not in these counters
        other = ev(10, 5, 0, 5, replica="local-1")
        await ledger.insert([*RECORDED, before_start, other])
        targets = [
            ReplicaTarget("local-0", engine_url, "llamacpp", T0),
            ReplicaTarget("local-1", f"http://127.0.0.1:{free_port()}", "llamacpp", T0),  # nothing listens
            ReplicaTarget("local-2", f"{engine_url}/nowhere", "llamacpp", T0),  # 404
        ]
        ok, down, missing = await reconcile(ledger, targets, timeout=2.0)
    finally:
        await ledger.close()
    assert ok.error is None and ok.within(0) and ok.requests == 3
    assert down.error is not None and "unreachable" in down.error and not down.within(10**9)
    assert missing.error is not None and "HTTP 404" in missing.error


VLLM_STARTED = VLLM + (
    "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
    "# TYPE process_start_time_seconds gauge\n"
    f"process_start_time_seconds {T0 - 0.5}\n"
)


@pytest.fixture
async def signed_engines() -> AsyncIterator[dict[str, str]]:
    """Three engines on 127.0.0.1 that sign /v1/models (or not) like vLLM, llama.cpp and an unknown server."""
    runners, urls = [], {}
    for name, owner, text in [
        ("vllm", "vllm", VLLM_STARTED),
        ("llamacpp", "llamacpp", LLAMACPP_AFTER_3),
        ("unsigned", "someone", VLLM_STARTED),
    ]:

        async def models(request: web.Request, owner: str = owner) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "smollm2", "owned_by": owner}]})

        async def metrics(request: web.Request, text: str = text) -> web.Response:
            return web.Response(text=text, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{port}"
    yield urls
    for runner in runners:
        await runner.cleanup()


async def test_kind_and_start_are_asked_from_the_engine(sqlite_url: str, signed_engines: dict[str, str]) -> None:
    ledger = await SqlLedger.open(sqlite_url)
    try:
        served = [ev(1, 300, 128, 50, replica="engine-0"), ev(2, 200, 0, 70, replica="engine-0")]
        await ledger.insert([*served, ev(3, 9, 0, 9, replica="engine-0", at=T0 - 3600)])  # before its start
        await ledger.insert([replace(e, event_id=f"l{e.event_id}", replica_id="engine-1") for e in RECORDED])
        drifts = await reconcile(
            ledger,
            [
                ReplicaTarget("engine-0", signed_engines["vllm"], "openai", None),  # kind and start from the engine
                ReplicaTarget("engine-1", signed_engines["llamacpp"], "openai", T0),
                ReplicaTarget("engine-2", signed_engines["llamacpp"], "openai", None),  # llama.cpp: no start
                ReplicaTarget("engine-3", signed_engines["unsigned"], "openai", T0),
                ReplicaTarget("engine-1", signed_engines["llamacpp"], "sglang", T0),  # no counters read: ask
            ],
            timeout=2.0,
        )
    finally:
        await ledger.close()
    vllm, llama, no_start, unsigned, asked = drifts
    assert (vllm.kind, vllm.since, vllm.requests, vllm.basis) == ("vllm", T0 - 0.5, 2, "fresh")
    assert vllm.within(0) and llama.kind == "llamacpp" and llama.within(0) and llama.requests == 3
    assert no_start.error is not None and "--since" in no_start.error
    assert unsigned.error is not None and "set `kind`" in unsigned.error
    assert "not signed by llamacpp, vllm" in unsigned.error
    assert asked.kind == "llamacpp" and asked.within(0)


def test_local_replicas_take_their_launchers_kind() -> None:
    def record(rid: str) -> ProcRecord:
        return ProcRecord(pid=1, start_time=1, role="replica", url="http://127.0.0.1:1", id=rid)

    assert [local_kind(record(r)) for r in ("local-0", "vllm-1", "vllm-12", "other-0")] == [
        "llamacpp",
        "vllm",
        "vllm",
        "openai",  # unknown: asked from the engine
    ]


async def test_reconcile_cli_reads_vllm_replicas_with_vllm_counters(
    tmp_path: Path, signed_engines: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'fg.db'}"
    ledger = await SqlLedger.open(url)
    await ledger.insert([ev(1, 300, 128, 50, replica="vllm-0"), ev(2, 200, 0, 70, replica="vllm-0")])
    await ledger.close()
    env = {**os.environ, "FLEETGATE_DATABASE__URL": url, "FLEETGATE_RUN_DIR": str(tmp_path / "run")}
    replica = ProcRecord.of(os.getpid(), "replica", port=0, url=signed_engines["vllm"], id="vllm-0")
    RunDir(tmp_path / "run").write(RunState(status="running", replicas=[replica]))
    since = datetime.fromtimestamp(T0, UTC).isoformat()
    proc = await asyncio.create_subprocess_exec(
        *FLEETGATE,
        *("usage", "reconcile", "--since", since, "--json", "--max-drift", "0"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (err + out).decode()
    (drift,) = json.loads(out)["replicas"]
    # Read as llama.cpp (the old code), vLLM's text has no llamacpp:* counters: an error row and exit 1.
    assert (drift["kind"], drift["requests"], drift["prompt_drift"], drift["completion_drift"]) == ("vllm", 2, 0, 0)


def test_cached_tokens_billed_as_fresh_are_drift() -> None:
    # The abort of LLAMACPP_AFTER_ABORT recorded with its prompt but without the 24 cached tokens the engine used:
    # the totals agree, yet the tenant would pay 24 cached tokens at the fresh rate. Both sides of it show.
    partial = ev(4, 37, 0, 76)
    drift = compare(TARGET, totals(*RECORDED, partial), LLAMACPP.token_counters(LLAMACPP_AFTER_ABORT))
    assert (drift.prompt_drift, drift.cached_drift, drift.completion_drift) == (-24, 24, 0)
    assert not drift.within(23) and drift.within(24) and drift.to_json()["cached_drift"] == 24
    unknown = compare(TARGET, totals(partial), EngineCounters(13, None, 76))
    assert unknown.engine_cached is None and unknown.cached_drift == 0  # an engine that does not count them apart
