"""Routing policies: each turns the filtered candidates into one choice and a reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter_ns

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import LOADS, SESSION_RING, Scorer
from fleetgate.routing.context import RouteContext
from fleetgate.routing.pickers import EPSILON, best_index, least_loaded
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.settings import RoutingSettings
from fleetgate.routing.stats import RouterStats

IMBALANCE = "imbalance->least_load"


class ScorePolicy:
    """Weighted sum of scorers; ties broken by load then at random; an overloaded winner yields to least load.

    Three policies are this class: `score` sums every registered scorer with a weight above 0 (each scorer's
    default, over which `routing.params.weights` is laid); `prefix` is the prefix scorer alone and `lora` the
    adapter scorer alone (weight 1). Locality must never pile traffic on one replica: when the winner carries more
    than `imbalance_abs` requests over the least loaded candidate and more than `imbalance_rel` times its load,
    the least loaded candidate wins instead (reason `imbalance->least_load`).

    Inputs: loads, and its scorers' inputs
    Parameters: the router's imbalance_abs, imbalance_rel (top level of routing.params)

    Example:
        ```yaml
        routing:
          policy: score
          params:
            imbalance_abs: 4
            imbalance_rel: 1.5
            weights: {prefix: 3, session: 1, adapter: 2, queue: 1, in_flight: 1, kv: 1, tokens: 0}
        ```
    """

    def __init__(
        self,
        name: str,
        scorers: Sequence[tuple[Scorer, float]],
        settings: RoutingSettings,
        stats: RouterStats,
        imbalance: bool = True,
    ) -> None:
        self.name = name
        self._scorers = [(s, w, f"scorer:{s.name}") for s, w in scorers if w > 0]
        self._settings = settings
        self._stats = stats
        self._imbalance = imbalance
        read = [LOADS, *(i for s, _, _ in self._scorers for i in s.inputs)]
        self.inputs: tuple[str, ...] = tuple(dict.fromkeys(read))  # in order, once each

    def choose(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> tuple[int, str]:
        """Index of the chosen candidate and the reason (`prefix:0.83`, `tie->random`, `imbalance->least_load`)."""
        n = len(candidates)
        if n == 1:
            return 0, "only"
        totals: list[float] | None = None
        sparse: list[tuple[float, Mapping[int, float]]] = []
        parts: list[tuple[str, float, Sequence[float] | Mapping[int, float]]] = []
        time_it = self._stats.time
        for scorer, weight, timer in self._scorers:
            started = perf_counter_ns()
            values = scorer.score(request, candidates, ctx)
            time_it(timer, perf_counter_ns() - started)
            if values is None:
                continue
            parts.append((scorer.name, weight, values))
            if isinstance(values, Mapping):
                sparse.append((weight, values))
            elif totals is None:
                totals = [weight * v for v in values]
            else:
                totals = [t + weight * v for t, v in zip(totals, values, strict=True)]
        if totals is None:
            totals = [0.0] * n
        for weight, values in sparse:
            for i, v in values.items():
                totals[i] += weight * v
        loads = ctx.loads()
        index, tie = best_index(totals, loads, ctx.rng)
        if self._imbalance and self._overloaded(loads, index):
            return least_loaded(loads, ctx.rng), IMBALANCE
        return index, tie or _explain(index, n, parts)

    def _overloaded(self, loads: Sequence[float], index: int) -> bool:
        # Locality must never pile traffic on one replica: if the winner carries clearly more than the least
        # loaded candidate (both by an absolute and a relative margin), load wins.
        low = min(loads)
        mine = loads[index]
        return mine - low > self._settings.imbalance_abs and mine > self._settings.imbalance_rel * low


def _explain(index: int, n: int, parts: Sequence[tuple[str, float, Sequence[float] | Mapping[int, float]]]) -> str:
    """The scorer that lifted the winner most above the candidates' mean, with the winner's value."""
    best_name, best_margin, best_value = "", EPSILON, 0.0
    for name, weight, values in parts:
        if isinstance(values, Mapping):
            mine, mean = values.get(index, 0.0), sum(values.values()) / n
        else:
            mine, mean = values[index], sum(values) / n
        margin = weight * (mine - mean)
        if margin > best_margin:
            best_name, best_margin, best_value = name, margin, mine
    return f"{best_name}:{best_value:.2f}" if best_name else "score"


class LeastLoadPolicy:
    """The candidate with the fewest requests (engine running + waiting when fresh, else our own in-flight).

    Equal loads are chosen among at random, never always the first.

    Inputs: loads
    Parameters: none (the router's stale_after decides when a scrape is too old to count)

    Example:
        ```yaml
        routing:
          policy: least_load
          params: {stale_after: 5.0}
        ```
    """

    name = "least_load"
    inputs: tuple[str, ...] = (LOADS,)

    def choose(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> tuple[int, str]:
        """Least loaded, equal loads at random."""
        loads = ctx.loads()
        index = least_loaded(loads, ctx.rng)
        return index, f"load:{loads[index]:g}"


class SessionPolicy:
    """Consistent hashing on the session key; requests without one go to the least loaded replica.

    Inputs: request.session, session_ring, loads
    Parameters: none (the ring's points per replica are the router's vnodes)

    Example:
        ```yaml
        routing:
          policy: session
          params: {vnodes: 100}
        ```
    """

    name = "session"
    inputs: tuple[str, ...] = ("request.session", SESSION_RING, LOADS)

    def choose(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> tuple[int, str]:
        """The session's owner on the ring of the current candidates."""
        if request.session is not None:
            owner = ctx.session_owner(request.session)
            for i, replica in enumerate(candidates):
                if replica.id == owner:
                    return i, "session"
        return least_loaded(ctx.loads(), ctx.rng), "no_session->least_load"
