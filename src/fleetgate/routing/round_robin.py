"""Round-robin: each model's candidates in turn."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.router import RouteDecision, RouteRequest


class RoundRobinRouter:
    """Cycles through the candidates per model, so retries and unhealthy replicas don't skew the spread."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, request: RouteRequest, candidates: Sequence[Replica]) -> RouteDecision:
        """Take the next candidate for this model."""
        n = self._next.get(request.model, 0)
        self._next[request.model] = n + 1
        return RouteDecision(candidates[n % len(candidates)], self.name, "turn")
