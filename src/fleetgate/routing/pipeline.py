"""The routing loop every policy runs in: filters -> policy -> claim -> record; timed and explained."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from time import perf_counter_ns
from typing import TYPE_CHECKING

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.breaker import BreakerRegistry
from fleetgate.routing.context import RouteContext
from fleetgate.routing.prefix_index import PrefixIndex
from fleetgate.routing.ring import RingCache
from fleetgate.routing.router import RouteDecision, RouteRequest
from fleetgate.routing.settings import RoutingSettings
from fleetgate.routing.stats import RouterStats

if TYPE_CHECKING:
    from fleetgate.routing.plugins import Filter, Policy


class RoutingPipeline:
    """A Router: runs the filters, asks the policy, claims the breaker probe, records the prompt's blocks.

    The proxy calls `pick()` per attempt and `finish()` exactly once per decision when that attempt ends.
    """

    def __init__(
        self,
        policy: Policy,
        filters: Sequence[Filter],
        settings: RoutingSettings,
        *,
        breakers: BreakerRegistry,
        index: PrefixIndex,
        stats: RouterStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = policy.name
        self.policy = policy
        self.filters = list(filters)
        self.settings = settings
        self.breakers = breakers
        self.index = index
        self.stats = stats or RouterStats()
        self.rings = RingCache(settings.vnodes)
        self._clock = clock
        self._rng = rng or random.Random(settings.seed)  # load spreading, not secrets
        self._last: tuple[RouteRequest | None, list[int]] = (None, [])
        # The candidate list is usually the same replicas decision after decision: keep its id -> index map and
        # member set, checked with one C-level tuple comparison instead of rebuilt per decision.
        self._fleet: tuple[Replica, ...] = ()
        self._fleet_positions: dict[str, int] = {}
        self._fleet_members: frozenset[str] = frozenset()
        self._filter_names = [f"filter:{f.name}" for f in self.filters]
        self._policy_name = f"policy:{policy.name}"

    def _shape(self, current: list[Replica]) -> tuple[dict[str, int], frozenset[str]]:
        fleet = tuple(current)
        if fleet != self._fleet:
            self._fleet = fleet
            self._fleet_positions = {r.id: i for i, r in enumerate(fleet)}
            self._fleet_members = frozenset(self._fleet_positions)
        return self._fleet_positions, self._fleet_members

    def _hashes(self, request: RouteRequest) -> list[int]:
        if not self.policy.uses_prefix or not request.prompt_text:
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
        positions, members = self._shape(current)
        ctx = RouteContext(
            current, self._clock(), self.settings, self.index, self.rings, self._rng, hashes, positions, members
        )
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
