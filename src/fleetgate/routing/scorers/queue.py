"""The queue scorer: prefer replicas whose engine has fewer requests waiting."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import NEUTRAL, Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.params import param, parameters
from fleetgate.routing.router import RouteRequest


class QueueScorer(Scorer):
    """Fewer requests waiting in the engine's queue is better: 1 / (1 + waiting / scale).

    The waiting count comes from the engine's last scrape, which sees every gateway's traffic; a scrape older
    than `routing.params.stale_after` is not trusted and the replica scores neutral (0.5).

    Inputs: metrics.waiting
    Parameters (routing.params.queue):
        scale: float > 0 = 4.0 -- waiting requests at which the score halves
    Weight: 1.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {queue: 1.0}
            queue: {scale: 4.0}
        ```
    """

    name = "queue"
    weight = 1.0
    inputs = ("metrics.waiting",)

    @parameters
    class Params:
        """The queue scorer's parameters."""

        scale: float = param(4.0, gt=0)

    def __init__(self, params: QueueScorer.Params) -> None:
        self._scale = params.scale

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """Queue score per candidate; neutral when the scrape is stale."""
        s = self._scale
        return [NEUTRAL if m is None else 1.0 / (1.0 + m.waiting / s) for m in ctx.metrics()]
