"""The in-flight scorer: prefer replicas this gateway has fewer requests running on."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.params import param, parameters
from fleetgate.routing.router import RouteRequest


class InFlightScorer(Scorer):
    """Fewer requests this gateway has in flight there is better: 1 / (1 + in_flight / scale).

    The router's own count is never stale, so this term holds even between scrapes.

    Inputs: replica.in_flight
    Parameters (routing.params.in_flight):
        scale: float > 0 = 4.0 -- own in-flight requests at which the score halves
    Weight: 1.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {in_flight: 1.0}
            in_flight: {scale: 4.0}
        ```
    """

    name = "in_flight"
    weight = 1.0
    inputs = ("replica.in_flight",)

    @parameters
    class Params:
        """The in-flight scorer's parameters."""

        scale: float = param(4.0, gt=0)

    def __init__(self, params: InFlightScorer.Params) -> None:
        self._scale = params.scale

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """In-flight score per candidate."""
        s = self._scale
        return [1.0 / (1.0 + r.in_flight / s) for r in candidates]
