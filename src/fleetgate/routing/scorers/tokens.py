"""The tokens scorer: prefer replicas with fewer estimated prompt tokens in flight from this gateway."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.params import param, parameters
from fleetgate.routing.router import RouteRequest


class TokensScorer(Scorer):
    """Fewer estimated prompt tokens in flight there is better: 1 / (1 + tokens / scale).

    Long prompts weigh more than short ones; the router adds each request's estimate when it routes it and takes
    it back when the attempt ends. Off by default: request counts and KV pressure already carry most of it.

    Inputs: replica.in_flight_tokens, request.est_tokens
    Parameters (routing.params.tokens):
        scale: float > 0 = 8192.0 -- own in-flight prompt tokens at which the score halves
    Weight: 0.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {tokens: 1.0}
            tokens: {scale: 8192}
        ```
    """

    name = "tokens"
    weight = 0.0
    inputs = ("replica.in_flight_tokens", "request.est_tokens")

    @parameters
    class Params:
        """The tokens scorer's parameters."""

        scale: float = param(8192.0, gt=0)

    def __init__(self, params: TokensScorer.Params) -> None:
        self._scale = params.scale

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """In-flight token score per candidate."""
        s = self._scale
        return [1.0 / (1.0 + r.in_flight_tokens / s) for r in candidates]
