"""The routing loop every policy runs in: filters -> policy -> claim -> record; timed and explained."""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter_ns

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import PREFIX_INDEX, Filter, Policy
from fleetgate.routing.breaker import BreakerRegistry
from fleetgate.routing.context import RouterState
from fleetgate.routing.router import RouteDecision, RouteRequest
from fleetgate.routing.stats import RouterStats


class RoutingPipeline:
    """A Router: runs the filters, asks the policy, claims the breaker probe, records the prompt's blocks.

    The proxy calls `pick()` per attempt and `finish()` exactly once per decision when that attempt ends.
    """

    def __init__(
        self,
        policy: Policy,
        filters: Sequence[Filter],
        state: RouterState,
        breakers: BreakerRegistry,
        stats: RouterStats | None = None,
    ) -> None:
        self.name = policy.name
        self.policy = policy
        self.filters = list(filters)
        self.state = state
        self.index = state.index  # the proxy may also record a turn's prompt + reply; benchmarks fill it
        self.breakers = breakers
        self.stats = stats or RouterStats()
        self._uses_prefix = PREFIX_INDEX in policy.inputs
        self._last: tuple[RouteRequest | None, list[int]] = (None, [])
        self._filter_names = [f"filter:{f.name}" for f in self.filters]
        self._policy_name = f"policy:{policy.name}"

    def _hashes(self, request: RouteRequest) -> list[int]:
        if not self._uses_prefix or not request.prompt_text:
            return []
        last, hashes = self._last
        if last is not request:  # a retry re-routes the same request object: hash its prompt once
            hashes = self.index.hashes(request.tenant, request.prompt_text)
            self._last = (request, hashes)
        return hashes

    def pick(self, request: RouteRequest, candidates: Sequence[Replica]) -> RouteDecision:
        """Choose a replica among non-empty candidates and say why."""
        started = perf_counter_ns()
        stats = self.stats
        current = list(candidates)
        skipped: list[str] = []
        for f, timer in zip(self.filters, self._filter_names, strict=True):
            t0 = perf_counter_ns()
            kept = f.keep(request, current)
            stats.time(timer, perf_counter_ns() - t0)
            if kept:
                current = kept
            else:
                # Fail open: a filter that leaves nothing (every breaker open, no replica with the adapter) is
                # skipped, so the engine gives the real answer rather than the gateway guessing a 503.
                skipped.append(f.name)
                stats.fallback(f.name)
        hashes = self._hashes(request)
        ctx = self.state.context(current, hashes)
        t0 = perf_counter_ns()
        index, reason = self.policy.choose(request, current, ctx)
        stats.time(self._policy_name, perf_counter_ns() - t0)
        replica = current[index]
        self.breakers.allow(replica.id)  # in half-open, this request is the probe
        if hashes:
            t0 = perf_counter_ns()
            self.index.record_hashes(hashes, replica.id)
            stats.time("prefix_record", perf_counter_ns() - t0)
        replica.in_flight_tokens += request.est_tokens
        if skipped:
            reason = f"{reason};fallback={','.join(skipped)}"
        stats.decision(self.name, reason)
        stats.time("pick", perf_counter_ns() - started)
        return RouteDecision(replica, self.name, reason, request.est_tokens)

    def finish(self, decision: RouteDecision, ok: bool | None) -> None:
        """End of one attempt: ok=True success, False replica failure (connect, timeout, 5xx), None no verdict."""
        replica = decision.replica
        replica.in_flight_tokens = max(0, replica.in_flight_tokens - decision.est_tokens)
        if ok is True:
            self.breakers.success(replica.id)
        elif ok is False:
            self.breakers.failure(replica.id)
        else:
            self.breakers.release(replica.id)
