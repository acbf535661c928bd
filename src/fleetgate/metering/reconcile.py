"""Reconcile the ledger with the engines' own token counters, per replica.

An engine's counters start at zero when its process starts, so each replica is compared over the events that
started since then. Counter semantics differ by engine (see ENGINES.md):
- llama.cpp: `llamacpp:prompt_tokens_total` EXCLUDES cached tokens (compare with the ledger's fresh input),
  `llamacpp:tokens_predicted_total` is output; cancelled requests' tokens are counted too.
- vLLM: `vllm:prompt_tokens_total` includes cached tokens, `vllm:prompt_tokens_cached_total` (when present) gives
  the cached part, `vllm:generation_tokens_total` is output; series are labelled (engine, model_name) and summed.
Drift = engine - ledger. Positive: the engine computed tokens the ledger lacks (events still in the outbox, lost
events, traffic that bypassed the gateway); negative: the ledger holds more than the engine computed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetgate.errors import FleetgateError
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
    """A replica to reconcile: where its /metrics is, what engine it runs, when its counters began (Unix s)."""

    id: str
    url: str
    kind: str
    since: float


@dataclass(frozen=True, slots=True)
class Drift:
    """Ledger against engine for one replica; `basis` says whether prompt figures are fresh or total tokens."""

    replica_id: str
    url: str
    kind: str
    since: float
    requests: int = 0
    basis: Literal["fresh", "total"] = "fresh"
    ledger_prompt: int = 0
    engine_prompt: int = 0
    ledger_completion: int = 0
    engine_completion: int = 0
    error: str | None = None

    @property
    def prompt_drift(self) -> int:
        """Engine minus ledger prompt tokens."""
        return self.engine_prompt - self.ledger_prompt

    @property
    def completion_drift(self) -> int:
        """Engine minus ledger output tokens."""
        return self.engine_completion - self.ledger_completion

    def within(self, tokens: int = 0) -> bool:
        """True if both drifts are at most `tokens` in size and the engine was read."""
        return self.error is None and abs(self.prompt_drift) <= tokens and abs(self.completion_drift) <= tokens

    def to_json(self) -> dict[str, Any]:
        """Plain dict including the drifts."""
        return {**asdict(self), "prompt_drift": self.prompt_drift, "completion_drift": self.completion_drift}


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
    """Ledger totals against engine counters: fresh prompt tokens when the engine counts them, else totals."""
    fresh = engine.prompt_fresh is not None
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
    )


async def fetch_metrics(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> str:
    """GET <url>/metrics as text; ReconcileError if the engine cannot be read."""
    target = url.rstrip("/") + "/metrics"
    try:
        async with session.get(target, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise ReconcileError(f"{target} answered HTTP {resp.status}")
            return await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ReconcileError(f"{target} unreachable: {type(exc).__name__} {exc}".rstrip()) from None


async def _one(ledger: SqlLedger, session: aiohttp.ClientSession, target: ReplicaTarget, timeout: float) -> Drift:
    try:
        counters = parse_counters(target.kind, await fetch_metrics(session, target.url, timeout))
    except ReconcileError as exc:
        return Drift(replica_id=target.id, url=target.url, kind=target.kind, since=target.since, error=str(exc))
    # Scrape first, then read the ledger: a request ending in between shows as negative drift, never hides a loss.
    totals = await ledger.replica_totals(target.since, replica_ids=[target.id])
    return compare(target, totals.get(target.id, TokenTotals()), counters)


async def reconcile(ledger: SqlLedger, targets: list[ReplicaTarget], timeout: float = 5.0) -> list[Drift]:
    """Scrape every target's /metrics concurrently and compare each with the ledger since its counters began."""
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_one(ledger, session, t, timeout) for t in targets)))
