"""Reconcile the ledger with the engines' own token counters, per replica.

An engine's counters start at zero when its process starts, so each replica is compared over the events that
started since then. Which counters an engine keeps and what they mean is its dialect's (`read_counters` in
engines/llamacpp.py, engines/vllm.py): fresh prompt tokens when the engine counts them apart (compared with the
ledger's fresh input), else all prompt tokens; output tokens. Drift = engine - ledger. Positive: the engine
computed tokens the ledger lacks (events still in the outbox, lost events, traffic that bypassed the gateway);
negative: the ledger holds more than the engine computed.

Which dialect to read with comes from the engine's kind: a local replica's is its launcher's; an engine started
elsewhere that config does not name a kind for is asked, as the health check does (`owned_by` in /v1/models).
Its counters began when its process did: vLLM says when (`process_start_time_seconds`); for llama.cpp, give
`--since` (the engine's start, or any time after which all its traffic came through this gateway).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import aiohttp

from fleetgate.domain.errors import FleetgateError
from fleetgate.engines.base import EngineAdapter
from fleetgate.engines.counters import CountersError, EngineCounters
from fleetgate.engines.registry import detect_kind, reconcilable, reconcilable_kinds
from fleetgate.metering.ledger import SqlLedger, TokenTotals


class ReconcileError(FleetgateError):
    """An engine could not be read, or does not say what reconcile needs (its kind, its start)."""


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """A replica to reconcile: where its /metrics is, what engine it runs (a kind whose counters cannot be read,
    such as "openai": ask the engine), when its counters began (Unix s; None: ask the engine, which only vLLM
    can answer)."""

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


async def detect_adapter(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> EngineAdapter:
    """The engine's dialect from its signed model list (as the health check reads it); ReconcileError when the
    list is unsigned or names an engine whose counters cannot be read."""
    resp = await _get(session, url.rstrip("/") + "/v1/models", timeout)
    try:
        kind = detect_kind(await resp.json(content_type=None))
    except ValueError:
        kind = None
    adapter = reconcilable(kind) if kind is not None else None
    if adapter is None:
        raise ReconcileError(
            f"cannot tell which engine serves {url} (its /v1/models is not signed by"
            f" {', '.join(reconcilable_kinds())}): set `kind` for it in config"
        )
    return adapter


async def _one(ledger: SqlLedger, session: aiohttp.ClientSession, target: ReplicaTarget, timeout: float) -> Drift:
    try:
        adapter = reconcilable(target.kind) or await detect_adapter(session, target.url, timeout)
        target = replace(target, kind=adapter.kind)
        counters = adapter.token_counters(await fetch_metrics(session, target.url, timeout))
        if target.since is None:
            target = replace(target, since=_began(counters))
    except (ReconcileError, CountersError) as exc:
        return Drift(replica_id=target.id, url=target.url, kind=target.kind, since=target.since, error=str(exc))
    assert target.since is not None
    # Scrape first, then read the ledger: a request ending in between shows as negative drift, never hides a loss.
    totals = await ledger.replica_totals(target.since, replica_ids=[target.id])
    return compare(target, totals.get(target.id, TokenTotals()), counters)


def _began(counters: EngineCounters) -> float:
    if not counters.started_at:
        raise ReconcileError("the engine does not say when its counters began: pass --since")
    return counters.started_at


async def reconcile(ledger: SqlLedger, targets: list[ReplicaTarget], timeout: float = 5.0) -> list[Drift]:
    """Scrape every target's /metrics concurrently and compare each with the ledger since its counters began."""
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_one(ledger, session, t, timeout) for t in targets)))
