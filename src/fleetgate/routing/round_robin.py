"""Round-robin: each model's candidates in turn."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.context import RouteContext
from fleetgate.routing.router import RouteDecision, RouteRequest


class RoundRobinRouter:
    """Cycles through the candidates per model, so retries and unhealthy replicas don't skew the spread.

    Inputs: request.model
    Parameters: none

    Example:
        ```yaml
        routing:
          policy: round_robin
        ```
    """

    name = "round_robin"
    inputs: tuple[str, ...] = ("request.model",)

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def _turn(self, model: str, n: int) -> int:
        turn = self._next.get(model, 0)
        self._next[model] = turn + 1
        return turn % n

    def pick(self, request: RouteRequest, candidates: Sequence[Replica]) -> RouteDecision:
        """Take the next candidate for this model."""
        return RouteDecision(candidates[self._turn(request.model, len(candidates))], self.name, "turn")

    def choose(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> tuple[int, str]:
        """Policy form of pick() for the routing pipeline."""
        return self._turn(request.model, len(candidates)), "turn"
