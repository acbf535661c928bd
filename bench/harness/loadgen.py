"""Closed-loop HTTP load: N workers each send the next request as soon as the last one ended, for a fixed time."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from harness.stats import interpolated

CHAT_PATH = "/v1/chat/completions"
_MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
NON_STREAM_BODY = orjson.dumps({"model": "fake", "messages": _MESSAGES, "max_tokens": 16})
# No stream_options: the client does not ask for usage, so no usage chunk may reach it through any proxy.
STREAM_BODY = orjson.dumps({"model": "fake", "messages": _MESSAGES, "max_tokens": 16, "stream": True})


@dataclass
class Target:
    """One thing to send load to; `cpu_role` names the process tree whose CPU time is charged to it."""

    name: str
    base_url: str
    api_key: str | None
    cpu_role: str
    session: aiohttp.ClientSession | None = None

    def headers(self) -> dict[str, str]:
        """Request headers (the bearer key when there is one)."""
        h = {"content-type": "application/json"}
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        return h

    async def open(self, max_conns: int) -> None:
        """Open this target's own connection pool, so targets never share connections."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_conns, limit_per_host=max_conns, keepalive_timeout=300),
            timeout=aiohttp.ClientTimeout(total=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        """Close the pool."""
        if self.session is not None:
            await self.session.close()
            self.session = None


@dataclass
class CellResult:
    """What one target did in one (concurrency, mode) cell of one round."""

    target: str
    concurrency: int
    stream: bool
    elapsed: float
    requests: int
    latencies: list[float] = field(repr=False)
    ttfbs: list[float] = field(repr=False)
    chunks: int
    errors: int
    error_kinds: dict[str, int]
    cpu: dict[str, float]  # CPU seconds used during the cell, by process role
    upstream_conns: int | None = None  # connections the engine accepted during the cell (pool reuse check)

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict[str, Any]:
        """Numbers only (no raw samples), for JSON and for taking medians across rounds."""
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "stream": self.stream,
            "elapsed_s": self.elapsed,
            "requests": self.requests,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "rps": self.rps,
            "p50_ms": percentile(self.latencies, 50) * 1e3,
            "p99_ms": percentile(self.latencies, 99) * 1e3,
            "ttfb_p50_ms": percentile(self.ttfbs, 50) * 1e3 if self.ttfbs else None,
            "chunks": self.chunks,
            "cpu_s": self.cpu,
            "upstream_conns_opened": self.upstream_conns,
        }


def percentile(samples: list[float], pct: float) -> float:
    """The pct-th percentile with linear interpolation (NaN when there are no samples)."""
    value = interpolated(samples, pct)
    return float("nan") if value is None else value


def check_stream(data: bytes, expected_chunks: int) -> tuple[int, str | None]:
    """Count the chunk events of a whole SSE body; return (chunks, what is wrong or None)."""
    chunks = data.count(b"data: {")
    if not data.rstrip().endswith(b"data: [DONE]"):
        return chunks, "stream did not end with [DONE]"
    if b'"usage":{' in data or b'"choices":[]' in data:
        return chunks, "usage chunk reached a client that did not ask for it"
    if chunks != expected_chunks:
        return chunks, f"expected {expected_chunks} chunks, got {chunks}"
    return chunks, None


def check_completion(data: bytes) -> str | None:
    """What is wrong with a non-stream answer, or None."""
    if b'"finish_reason":"stop"' not in data or b"tok15 " not in data:
        return "completion body is not the fake engine's answer"
    return None


@dataclass
class _Tally:
    """What the workers of one cell saw."""

    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    chunks: int = 0


def _requester(target: Target, stream: bool, expected_chunks: int, tally: _Tally) -> Callable[[], Awaitable[None]]:
    """One closed-loop request against `target`, checked and counted into `tally` (locals only: it is the hot loop
    of the load generator, whose CPU the measured processes share)."""
    session = target.session
    assert session is not None, "Target.open() first"
    url = target.base_url + CHAT_PATH
    body = STREAM_BODY if stream else NON_STREAM_BODY
    headers = target.headers()
    latencies, ttfbs, kinds = tally.latencies, tally.ttfbs, tally.kinds
    clock = time.perf_counter

    async def one() -> None:
        n = 0
        t0 = first = clock()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                if not stream:
                    data = await resp.read()
                    t_end = clock()
                    problem = f"HTTP {resp.status}" if resp.status != 200 else check_completion(data)
                else:
                    parts: list[bytes] = []
                    async for piece in resp.content.iter_any():
                        if not parts:
                            first = clock()
                        parts.append(piece)
                    t_end = clock()
                    if resp.status != 200:
                        problem = f"HTTP {resp.status}"
                    else:
                        n, problem = check_stream(b"".join(parts), expected_chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            kinds[type(exc).__name__] += 1
            return
        if problem is not None:
            kinds[problem] += 1
            return
        latencies.append(t_end - t0)
        if stream:
            ttfbs.append(first - t0)
            tally.chunks += n

    return one


async def run_cell(
    target: Target,
    concurrency: int,
    stream: bool,
    duration: float,
    expected_chunks: int,
    cpu_probe: Callable[[], dict[str, float]] | None = None,
) -> CellResult:
    """Run `concurrency` closed-loop workers against `target` for `duration` seconds and measure."""
    tally = _Tally()
    one = _requester(target, stream, expected_chunks, tally)
    clock = time.perf_counter

    async def worker(deadline: float) -> None:
        while clock() < deadline:
            await one()

    # The collector would pause this process at random points, which lands in whichever target is running.
    gc.collect()
    gc.disable()
    try:
        cpu0 = cpu_probe() if cpu_probe else {}
        began = clock()
        await asyncio.gather(*(worker(began + duration) for _ in range(concurrency)))
        elapsed = clock() - began
        cpu1 = cpu_probe() if cpu_probe else {}
    finally:
        gc.enable()
    return CellResult(
        target=target.name,
        concurrency=concurrency,
        stream=stream,
        elapsed=elapsed,
        requests=len(tally.latencies),
        latencies=tally.latencies,
        ttfbs=tally.ttfbs,
        chunks=tally.chunks,
        errors=sum(tally.kinds.values()),
        error_kinds=dict(tally.kinds),
        cpu={k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
    )


async def sanity_check(target: Target, expected_chunks: int) -> str | None:
    """One request of each kind; return what is wrong, or None."""
    assert target.session is not None
    url = target.base_url + CHAT_PATH
    try:
        async with target.session.post(url, data=NON_STREAM_BODY, headers=target.headers()) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"non-stream request answered HTTP {resp.status}: {data[:200]!r}"
            problem = check_completion(data)
            if problem:
                return f"non-stream: {problem}: {data[:200]!r}"
        async with target.session.post(url, data=STREAM_BODY, headers=target.headers()) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"stream request answered HTTP {resp.status}: {data[:200]!r}"
            _, problem = check_stream(data, expected_chunks)
            if problem:
                return f"stream: {problem}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"request failed: {type(exc).__name__}: {exc}"
    return None


async def upstream_connections(session: aiohttp.ClientSession, port: int) -> int:
    """How many connections the fake engine has accepted so far (its `/stats`)."""
    async with session.get(f"http://127.0.0.1:{port}/stats") as resp:
        return int((await resp.json())["connections"])
