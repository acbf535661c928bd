"""The load of bench/overload.py: the noisy tenant's load generator (run as its own process), the quiet tenant's
trickle, and the samplers that watch the engines' queues and the gateway's memory meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from fleetgate.tenancy.estimate import estimate_input_tokens
from harness import rest, runner
from harness.chat import CHAT_PATH, chat_headers, stream_chat
from harness.loadgen import percentile
from harness.usage import memory_kb

MODEL = "smollm2"
CALL_TIMEOUT = 30.0  # every client call is bounded
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
STREAM_BODY = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True})
PLAIN_BODY = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16})
PROMPT_ESTIMATE = estimate_input_tokens(orjson.loads(PLAIN_BODY))


@dataclass
class LoadResult:
    """What one load generator saw: statuses, answer latencies, and how many it could not send."""

    mode: str
    elapsed: float = 0.0
    sent: int = 0
    skipped: int = 0  # open loop: due but not sent because max_outstanding were already in flight
    statuses: dict[str, int] = field(default_factory=dict)
    missing_retry_after: int = 0  # 429/503 without a Retry-After header
    per_second: list[int] = field(default_factory=list)  # answers per wall second
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # per status, p50 / p99 / max


class _Load:
    """One load generator's requests: closed loop (`workers` clients, each retrying 0.1 s after a refusal) or open
    loop (`rate` req/s, at most `max_outstanding` in flight)."""

    def __init__(self, spec: dict[str, Any], http: aiohttp.ClientSession, t0: float) -> None:
        self.spec = spec
        self.http = http
        self.url = spec["url"] + CHAT_PATH
        self.headers = chat_headers(spec["key"])
        self.body = PLAIN_BODY if spec["mode"] == "open" else STREAM_BODY
        self.result = LoadResult(spec["mode"])
        self.statuses: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.seconds: Counter[int] = Counter()
        self.loop = asyncio.get_running_loop()
        self.t0 = t0

    async def one(self) -> int | str:
        """One request; its status (or what went wrong)."""
        began = self.loop.time()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                async with self.http.post(self.url, data=self.body, headers=self.headers) as resp:
                    await resp.read()
                    status: int | str = resp.status
                    if status in (429, 503) and "retry-after" not in resp.headers:
                        self.result.missing_retry_after += 1
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as exc:
            status = f"error {type(exc).__name__}"
        ended = self.loop.time()
        self.statuses[str(status)] += 1
        self.latencies.setdefault(str(status), []).append(ended - began)
        self.seconds[int(ended - self.t0)] += 1
        return status

    async def closed(self, workers: int, duration: float) -> None:
        """`workers` clients, each sending its next request when the last one ended."""

        async def worker() -> None:
            while self.loop.time() - self.t0 < duration:
                self.result.sent += 1
                if await self.one() != 200:
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def open(self, rate: float, duration: float, limit: int) -> None:
        """`rate` requests per second on schedule, whether or not earlier ones were answered."""
        tasks: set[asyncio.Task[int | str]] = set()
        issued = 0
        while (now := self.loop.time() - self.t0) < duration:
            for _ in range(int(now * rate) - issued):
                issued += 1
                if len(tasks) >= limit:
                    self.result.skipped += 1
                    continue
                self.result.sent += 1
                task = asyncio.create_task(self.one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_TIMEOUT + 5)

    def finish(self, duration: float) -> LoadResult:
        """The result, with the statuses, answers per second and latencies."""
        result = self.result
        result.elapsed = self.loop.time() - self.t0
        result.statuses = dict(self.statuses)
        result.per_second = [self.seconds.get(s, 0) for s in range(int(duration))]
        result.latency_ms = {
            k: [percentile(v, 50) * 1e3, percentile(v, 99) * 1e3, max(v) * 1e3] for k, v in self.latencies.items()
        }
        return result


async def _load(spec: dict[str, Any]) -> LoadResult:
    """Run the load `spec` describes for its `duration`."""
    duration = float(spec["duration"])
    limit = int(spec.get("max_outstanding", 512))
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as http:
        load = _Load(spec, http, asyncio.get_running_loop().time())
        if spec["mode"] == "closed":
            await load.closed(int(spec["workers"]), duration)
        else:
            await load.open(float(spec["rate"]), duration, limit)
    return load.finish(duration)


def load_worker_main(spec_path: Path) -> int:
    """Entry point of the load-generator process: read the spec, run, write the result next to it."""
    spec = json.loads(spec_path.read_text())
    result = runner.run_async(_load(spec))
    Path(spec["out"]).write_text(json.dumps(asdict(result)))
    return 0


@dataclass
class Trickle:
    """The quiet tenant's requests in one phase."""

    ttft: list[float] = field(default_factory=list)  # seconds to the first content token, 200s only
    statuses: dict[str, int] = field(default_factory=dict)

    def p(self, pct: float) -> float:
        """A TTFT percentile in ms."""
        return percentile(self.ttft, pct) * 1e3


async def _quiet_call(http: aiohttp.ClientSession, url: str, key: str) -> tuple[str, float | None]:
    """One streamed request; its status and seconds to the first chunk carrying content."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            reply = await stream_chat(http, url, STREAM_BODY, chat_headers(key))
    except TimeoutError:
        return "timeout", None
    except aiohttp.ClientError as exc:
        return f"error {type(exc).__name__}", None
    if reply.status != 200:
        return str(reply.status), None
    return ("200", reply.ttft) if reply.ttft is not None else ("200 without content", None)


async def trickle(http: aiohttp.ClientSession, url: str, key: str, rate: float, seconds: float) -> Trickle:
    """Open loop: a quiet request every 1/rate s for `seconds`, not waiting for answers."""
    tasks = []
    t0 = time.perf_counter()
    n = 0
    while (now := time.perf_counter() - t0) < seconds:
        if now >= n / rate:
            n += 1
            tasks.append(asyncio.create_task(_quiet_call(http, url, key)))
        await asyncio.sleep(min(0.005, max(0.0, n / rate - now)))
    out = Trickle()
    statuses: Counter[str] = Counter()
    for status, ttft in await asyncio.gather(*tasks):
        statuses[status] += 1
        if ttft is not None:
            out.ttft.append(ttft)
    out.statuses = dict(statuses)
    return out


async def sample_engine_queues(http: aiohttp.ClientSession, engines: list[str], out: list[int]) -> None:
    """The longest `vllm:num_requests_waiting` among the engines, every 0.1 s until cancelled."""
    while True:
        longest = 0
        for engine in engines:
            try:
                async with asyncio.timeout(2.0), http.get(f"{engine}/metrics") as resp:
                    text = await resp.text()
            except (TimeoutError, aiohttp.ClientError):
                continue
            waiting = [v for _, v in rest.samples(text, "vllm:num_requests_waiting")]
            longest = max([longest, *(int(v) for v in waiting)])
        out.append(longest)
        await asyncio.sleep(0.1)


async def sample_rss(pid: int, samples: list[tuple[float, int, int]], t0: float) -> None:
    """VmRSS and VmHWM of `pid` every 0.25 s until cancelled."""
    while (kb := memory_kb(pid)) is not None:
        samples.append((time.monotonic() - t0, *kb))
        await asyncio.sleep(0.25)
