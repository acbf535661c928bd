"""Scorers: each rates every candidate in [0, 1] in one call (one call per scorer keeps a decision cheap).

A scorer returns a dense list (one value per candidate), a sparse map {candidate index: value} (the others score
0), or None when it has no opinion (every candidate equal): at 64 candidates, skipping whole passes is what keeps
a decision within its budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.context import RouteContext
from fleetgate.routing.router import RouteRequest

NEUTRAL = 0.5  # no (fresh) data: neither favoured nor avoided

Scores = Sequence[float] | Mapping[int, float] | None


class PrefixScorer:
    """Share of the prompt's blocks the replica recently saw, in the request tenant's namespace."""

    name = "prefix"

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """Matched prefix ratio of the candidates that match (sparse)."""
        return ctx.prefix_ratios() or None


class SessionScorer:
    """1 for the replica that owns the request's session on the consistent-hash ring."""

    name = "session"

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """1.0 for the session's owner (sparse); no opinion without a session."""
        if request.session is None:
            return None
        owner = ctx.session_owner(request.session)
        return {ctx.positions()[owner]: 1.0} if owner is not None else None


class AdapterScorer:
    """1 for replicas that have the request's LoRA adapter loaded now, or are loading it; 0.5 where loading it
    would need no unload (a free adapter slot); nothing for replicas that would have to evict one.

    A load in progress counts: a burst of requests for one cold adapter then follows the first one to its replica
    and shares that single load, instead of starting a load on every replica. A free slot is preferred so a cold
    adapter does not push out one that other requests are about to use."""

    name = "adapter"

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """1.0 where loaded or loading, 0.5 where there is room (sparse); no opinion without an adapter."""
        adapter = request.adapter
        if adapter is None:
            return None
        scores: dict[int, float] = {}
        for i, r in enumerate(candidates):
            if adapter in r.adapters or adapter in r.adapters_loading:
                scores[i] = 1.0
            elif r.max_adapters is not None and len(r.adapters) + len(r.adapters_loading) < r.max_adapters:
                scores[i] = 0.5
        return scores


class QueueScorer:
    """Fewer requests waiting in the engine's queue is better: 1 / (1 + waiting / scale)."""

    name = "queue"

    def __init__(self, scale: float) -> None:
        self._scale = scale

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """Queue score per candidate; neutral when the scrape is stale."""
        s = self._scale
        return [NEUTRAL if m is None else 1.0 / (1.0 + m.waiting / s) for m in ctx.metrics()]


class InFlightScorer:
    """Fewer requests this gateway has in flight there is better; the router's own count is never stale."""

    name = "in_flight"

    def __init__(self, scale: float) -> None:
        self._scale = scale

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """In-flight score per candidate."""
        s = self._scale
        return [1.0 / (1.0 + r.in_flight / s) for r in candidates]


class TokensScorer:
    """Fewer estimated prompt tokens in flight there is better (long prompts weigh more than short ones)."""

    name = "tokens"

    def __init__(self, scale: float) -> None:
        self._scale = scale

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """In-flight token score per candidate."""
        s = self._scale
        return [1.0 / (1.0 + r.in_flight_tokens / s) for r in candidates]


class KvScorer:
    """Lower KV-cache (or, on llama.cpp, slot) pressure is better: 1 - pressure."""

    name = "kv"

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """KV headroom per candidate; neutral when stale or unknown."""
        return [NEUTRAL if m is None or m.pressure is None else 1.0 - m.pressure for m in ctx.metrics()]
