"""The adapter scorer: send a LoRA request where its adapter is loaded, or can be loaded without an eviction."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.router import RouteRequest


class AdapterScorer(Scorer):
    """1 where the request's LoRA adapter is loaded or loading, 0.5 where a free slot could take it, else 0.

    A load in progress counts: a burst of requests for one cold adapter then follows the first one to its replica
    and shares that single load, instead of starting a load on every replica. A free slot is preferred so a cold
    adapter does not push out one that other requests are about to use. Adapter presence beats everything but
    prefix locality by default.

    Inputs: request.adapter, replica.adapters, replica.adapters_loading, replica.max_adapters
    Parameters: none
    Weight: 2.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {adapter: 2.0}
        ```
    """

    name = "adapter"
    weight = 2.0
    inputs = ("request.adapter", "replica.adapters", "replica.adapters_loading", "replica.max_adapters")

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
