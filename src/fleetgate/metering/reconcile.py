"""Reconcile the ledger with the engines' own token counters, per replica.

An engine's counters start at zero when its process starts, so each replica is compared over the events that
started since then. Counter semantics differ by engine (see ENGINES.md):
- llama.cpp: `llamacpp:prompt_tokens_total` EXCLUDES cached tokens (compare with the ledger's fresh input),
  `llamacpp:tokens_predicted_total` is output; cancelled requests' tokens are counted too.
- vLLM: `vllm:prompt_tokens_total` includes cached tokens, `vllm:prompt_tokens_cached_total` (when present) gives
  the cached part, `vllm:generation_tokens_total` is output; series are labelled (engine, model_name) and summed.
Drift = engine - ledger. Positive: the engine computed tokens the ledger lacks (events still in the outbox, lost
events, traffic that bypassed the gateway); negative: the ledger holds more than the engine computed.

Which counters to read comes from the engine's kind: a local replica's is its launcher's; an engine started
elsewhere that config does not name a kind for is asked, as the health check does (`owned_by` in /v1/models).
Its counters began when its process did: vLLM says when (`process_start_time_seconds`); for llama.cpp, give
`--since` (the engine's start, or any time after which all its traffic came through this gateway).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.domain.errors import FleetgateError
from fleetgate.fleet.health import detected_kind
from fleetgate.metering.ledger import SqlLedger, TokenTotals

MetricsKind = Literal["llamacpp", "vllm"]
KINDS: tuple[MetricsKind, ...] = ("llamacpp", "vllm")


class ReconcileError(FleetgateError):
    """An engine's metrics could not be read or lack the counters reconcile needs."""


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Token counters of one engine process since it started."""

    prompt_fresh: int | None  # prompt tokens the engine computed (cached ones excluded), if it tells
    prompt_total: int | None  # prompt tokens including cached ones, if it tells
    completion: int


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """A replica to reconcile: where its /metrics is, what engine it runs (anything but a kind in KINDS: ask the
    engine), when its counters began (Unix s; None: ask the engine, which only vLLM can answer)."""

    id: str
    url: str
    kind: str
    since: float | None


@dataclass(frozen=True, slots=True)
class Drift:
    """Ledger against engine for one replica; `basis` says whether prompt figures are fresh or total tokens."""

    replica_id: str
    url: str
    kind: str
    since: float | None
    requests: int = 0
    basis: Literal["fresh", "total"] = "fresh"
    ledger_prompt: int = 0
    engine_prompt: int = 0
    ledger_completion: int = 0
    engine_completion: int = 0
    ledger_cached: int = 0
    engine_cached: int | None = None  # None: the engine does not count cached tokens apart
    error: str | None = None

    @property
    def prompt_drift(self) -> int:
        """Engine minus ledger prompt tokens."""
        return self.engine_prompt - self.ledger_prompt

    @property
    def completion_drift(self) -> int:
        """Engine minus ledger output tokens."""
        return self.engine_completion - self.ledger_completion

    @property
    def cached_drift(self) -> int:
        """Engine minus ledger cached prompt tokens (0 when the engine does not count them apart)."""
        return 0 if self.engine_cached is None else self.engine_cached - self.ledger_cached

    def within(self, tokens: int = 0) -> bool:
        """True if every drift is at most `tokens` in size and the engine was read."""
        drifts = (self.prompt_drift, self.completion_drift, self.cached_drift)
        return self.error is None and all(abs(d) <= tokens for d in drifts)

    def to_json(self) -> dict[str, Any]:
        """Plain dict including the drifts."""
        return {
            **asdict(self),
            "prompt_drift": self.prompt_drift,
            "completion_drift": self.completion_drift,
            "cached_drift": self.cached_drift,
        }


def _sums(text: str) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] += sample.value
    except ValueError as exc:
        raise ReconcileError(f"unreadable Prometheus text: {exc}") from None
    return sums


def _need(sums: dict[str, float], name: str, hint: str) -> int:
    if name not in sums:
        raise ReconcileError(f"/metrics has no {name}{hint}")
    return round(sums[name])


def _by_source(text: str, source: str) -> int | None:
    # Newer vLLM splits prompt tokens by where they came from; "local_compute" is the fresh part.
    found: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:prompt_tokens_by_source_total" and sample.labels.get("source") == source:
                found = (found or 0) + round(sample.value)
    return found


def parse_counters(kind: str, text: str) -> EngineCounters:
    """Read an engine's token counters from its Prometheus text (series with labels are summed)."""
    sums = _sums(text)
    if kind == "llamacpp":
        hint = " (start llama-server with --metrics)"
        fresh = _need(sums, "llamacpp:prompt_tokens_total", hint)
        cached = sums.get("llamacpp:prompt_tokens_cached_total")
        completion = _need(sums, "llamacpp:tokens_predicted_total", hint)
        return EngineCounters(fresh, None if cached is None else fresh + round(cached), completion)
    if kind == "vllm":
        total = _need(sums, "vllm:prompt_tokens_total", "")
        completion = _need(sums, "vllm:generation_tokens_total", "")
        cached = sums.get("vllm:prompt_tokens_cached_total")
        computed = total - round(cached) if cached is not None else _by_source(text, "local_compute")
        return EngineCounters(computed, total, completion)
    raise ReconcileError(f"cannot reconcile engine kind {kind!r}: known kinds are {', '.join(KINDS)}")


def compare(target: ReplicaTarget, ledger: TokenTotals, engine: EngineCounters) -> Drift:
    """Ledger totals against engine counters: fresh prompt tokens when the engine counts them, else totals; cached
    tokens too when the engine counts both (a row that bills cached tokens as fresh is drift, not a wash)."""
    fresh = engine.prompt_fresh is not None
    cached = None
    if engine.prompt_fresh is not None and engine.prompt_total is not None:
        cached = engine.prompt_total - engine.prompt_fresh
    return Drift(
        replica_id=target.id,
        url=target.url,
        kind=target.kind,
        since=target.since,
        requests=ledger.requests,
        basis="fresh" if fresh else "total",
        ledger_prompt=ledger.fresh_tokens if fresh else ledger.prompt_tokens,
        engine_prompt=engine.prompt_fresh if engine.prompt_fresh is not None else engine.prompt_total or 0,
        ledger_completion=ledger.completion_tokens,
        engine_completion=engine.completion,
        ledger_cached=ledger.cached_tokens,
        engine_cached=cached,
    )


async def _get(session: aiohttp.ClientSession, url: str, timeout: float) -> aiohttp.ClientResponse:
    try:
        resp = await session.get(url, timeout=aiohttp.ClientTimeout(total=timeout))
        if resp.status != 200:
            resp.release()
            raise ReconcileError(f"{url} answered HTTP {resp.status}")
        await resp.read()
        return resp
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ReconcileError(f"{url} unreachable: {type(exc).__name__} {exc}".rstrip()) from None


async def fetch_metrics(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> str:
    """GET <url>/metrics as text; ReconcileError if the engine cannot be read."""
    return await (await _get(session, url.rstrip("/") + "/metrics", timeout)).text()


async def detect_kind(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> MetricsKind:
    """The engine's kind from its signed model list (as the health check reads it); ReconcileError if unsigned."""
    resp = await _get(session, url.rstrip("/") + "/v1/models", timeout)
    try:
        kind = detected_kind(await resp.json(content_type=None))
    except ValueError:
        kind = None
    if kind not in KINDS:
        raise ReconcileError(
            f"cannot tell which engine serves {url} (its /v1/models is not signed by {', '.join(KINDS)}):"
            " set `kind` for it in config"
        )
    return kind


def process_start(text: str) -> float:
    """When the engine's process (and so its counters) started, from `process_start_time_seconds` (vLLM)."""
    start = _sums(text).get("process_start_time_seconds")
    if not start:
        raise ReconcileError("the engine does not say when its counters began: pass --since")
    return start


async def _one(ledger: SqlLedger, session: aiohttp.ClientSession, target: ReplicaTarget, timeout: float) -> Drift:
    try:
        if target.kind not in KINDS:
            target = replace(target, kind=await detect_kind(session, target.url, timeout))
        text = await fetch_metrics(session, target.url, timeout)
        counters = parse_counters(target.kind, text)
        if target.since is None:
            target = replace(target, since=process_start(text))
    except ReconcileError as exc:
        return Drift(replica_id=target.id, url=target.url, kind=target.kind, since=target.since, error=str(exc))
    assert target.since is not None
    # Scrape first, then read the ledger: a request ending in between shows as negative drift, never hides a loss.
    totals = await ledger.replica_totals(target.since, replica_ids=[target.id])
    return compare(target, totals.get(target.id, TokenTotals()), counters)


async def reconcile(ledger: SqlLedger, targets: list[ReplicaTarget], timeout: float = 5.0) -> list[Drift]:
    """Scrape every target's /metrics concurrently and compare each with the ledger since its counters began."""
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_one(ledger, session, t, timeout) for t in targets)))
