"""One real gateway in front of two fake engines (llama.cpp and vLLM dialects), shared by the fuzz tests.

Hypothesis drives synchronous test functions, so the gateway and its engines run on a thread of their own with
their own event loop; the tests talk to it over HTTP on 127.0.0.1 and reach into it (ledger, limiter) through
`FuzzGateway.call`. Every completion answer the fuzz tests get with the fuzz tenant's key goes into a journal, which
the last test of the package (test_ledger_after_fuzz.py) holds against the ledger and the engines' counters.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop

from fleetgate.tenancy.models import TenantSpec
from tests.fakes import FakeEngine
from tests.fuzz.client import Answer
from tests.gateway_harness import RunningGateway, running_gateway
from tests.waiting import wait_until

T = TypeVar("T")

FUZZ_TENANT = "fuzz-tenant-q7x"  # a name schemathesis's generated ids will not hit
FUZZ_KEY = "fg-test-fuzz-2c4e6a8b0d1f3e5a"
METRICS_TOKEN = "fg-test-metrics-9a7b5c3d1e"
MAX_BODY_BYTES = 32 * 1024
OUTPUT_CAP = 16  # the fuzz tenant's max_output_tokens: no body an engine gets may ask for more
INPUT_CAP = 4000
CONTEXT = 8192
START_SECONDS = 60.0  # bounds on the thread's start and stop (a loaded 2-core machine is slow, never this slow)


@dataclass(frozen=True)
class Sent:
    """A completion request sent with the fuzz tenant's key, as its answer identified it."""

    request_id: str | None  # None when the answer carried no x-request-id
    status: int
    stream: bool


def engine_refuses(body: dict[str, Any]) -> str | None:
    """What a real engine answers 400 for among the fields the gateway passes on: wrong types (llama-server and
    vLLM both validate these), so the fuzz also covers engine refusals being reshaped for the client."""
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "top_k", "seed"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{name} must be a number"
    stop = body.get("stop")
    strings = isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    if stop is not None and not isinstance(stop, str) and not strings:
        return "stop must be a string or an array of strings"
    return None


@dataclass
class FuzzGateway:
    """The gateway under fuzz, its engines, and what was sent to it."""

    engines: list[FakeEngine] = field(default_factory=list)
    journal: list[Sent] = field(default_factory=list)
    running: RunningGateway | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: asyncio.Event | None = None
    _failure: BaseException | None = None

    @property
    def port(self) -> int:
        """The gateway's port on 127.0.0.1."""
        assert self.running is not None
        return int(self.running.url.rsplit(":", 1)[1])

    @property
    def gw(self) -> RunningGateway:
        """The running gateway."""
        assert self.running is not None
        return self.running

    def start(self) -> None:
        """Start the thread; return once the gateway listens and both engines are healthy with their kinds known."""
        self._thread = threading.Thread(target=self._run, name="fuzz-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_SECONDS):
            raise TimeoutError(f"the fuzz gateway did not start within {START_SECONDS:g} s")
        failure, self._failure = self._failure, None  # reported here, not again by stop()
        if failure is not None:
            raise RuntimeError("the fuzz gateway failed to start") from failure

    def stop(self) -> None:
        """Stop the gateway and engines, join the thread (bounded)."""
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(START_SECONDS)
            assert not self._thread.is_alive(), "the fuzz gateway thread did not stop"
        if self._failure is not None:
            raise RuntimeError("the fuzz gateway failed while stopping") from self._failure

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the gateway's loop and wait for its result (bounded)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set_engines(self, **knobs: Any) -> None:
        """Set FakeEngine knobs (delay, mode, ...) on both engines, from the engines' own loop."""

        async def apply() -> None:
            for engine in self.engines:
                for name, value in knobs.items():
                    setattr(engine, name, value)

        self.call(apply())

    def note(self, answer: Answer, *, stream: bool) -> None:
        """Journal an answer to a completion request sent with the fuzz tenant's key."""
        self.journal.append(Sent(answer.headers.get("x-request-id"), answer.status, stream))

    def _run(self) -> None:
        loop = uvloop.new_event_loop()  # the loop `fleetgate up` serves on
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start() when it failed before ready
            self._failure = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.engines = [
            FakeEngine(owned_by=kind, context_len=CONTEXT, chunks_from_max_tokens=True, validate=engine_refuses)
            for kind in ("llamacpp", "vllm")
        ]
        workdir = tempfile.mkdtemp(prefix="fg-fuzz-")
        try:
            for engine in self.engines:
                await engine.start()
            async with running_gateway([e.url for e in self.engines], **_gateway_settings(workdir)) as running:
                await _seed_tenant(running)
                await wait_until(lambda: _fleet_known(running), timeout=START_SECONDS, what="both engines healthy")
                self.running = running
                self._ready.set()
                await self._stop.wait()
        finally:
            for engine in self.engines:
                await engine.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def _gateway_settings(workdir: str) -> dict[str, Any]:
    """Config for the fuzz gateway: small body limit, prices and a budget (so the reservation path runs), the
    I/O log on (hostile bodies go through redaction), admission with room for 2 requests (so the queue runs), and
    the default routing policy (prompts of every shape go through the prefix index)."""
    return {
        "sections": {
            "prices": {"models": {"fake": {"input": 1.0, "cached_input": 0.5, "output": 2.0}}},
            "admission": {"max_in_flight_per_replica": 1},
            "iolog": {"url": f"sqlite:///{workdir}/iolog.db"},
            "observability": {"metrics_token": METRICS_TOKEN},
            "routing": {"policy": "score"},  # the default: prefix index, sessions, load (the harness picks round robin)
        },
        "max_body_bytes": MAX_BODY_BYTES,
        "retries": 1,
        "first_byte_timeout": 5.0,
        "idle_timeout": 5.0,
    }


async def _seed_tenant(running: RunningGateway) -> None:
    store = running.gateway.store
    spec = TenantSpec(
        external_id=FUZZ_TENANT,
        max_output_tokens=OUTPUT_CAP,
        max_input_tokens=INPUT_CAP,
        max_concurrency=8,
        budget=1_000_000.0,
        io_log=True,
    )
    await store.upsert_tenant(spec)
    await store.create_key(FUZZ_TENANT, name="fuzz", plaintext=FUZZ_KEY)


def _fleet_known(running: RunningGateway) -> bool:
    replicas = running.gateway.registry.all()
    return (
        len(replicas) == 2
        and all(r.healthy and r.context_len for r in replicas)
        and ({r.kind for r in replicas} == {"llamacpp", "vllm"})
    )


@pytest.fixture(scope="package")
def fuzz_gateway() -> Iterator[FuzzGateway]:
    """The package's gateway (started once, stopped after the last fuzz test)."""
    running = FuzzGateway()
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="package")
def tenant_headers() -> dict[str, str]:
    """Auth for the fuzz tenant."""
    return {"Authorization": f"Bearer {FUZZ_KEY}"}
