"""The KV scorer: prefer replicas with KV-cache (or, on llama.cpp, slot) headroom."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import NEUTRAL, Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.router import RouteRequest


class KvScorer(Scorer):
    """Lower KV-cache pressure is better: 1 - pressure.

    Pressure is the engine's KV usage gauge, else (llama.cpp) busy plus deferred requests against its slots;
    neutral (0.5) when the scrape is stale or the engine reports neither.

    Inputs: metrics.pressure
    Parameters: none
    Weight: 1.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {kv: 1.0}
            stale_after: 5.0
        ```
    """

    name = "kv"
    weight = 1.0
    inputs = ("metrics.pressure",)

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """KV headroom per candidate; neutral when stale or unknown."""
        return [NEUTRAL if m is None or m.pressure is None else 1.0 - m.pressure for m in ctx.metrics()]
