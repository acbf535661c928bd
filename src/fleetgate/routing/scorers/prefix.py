"""The prefix scorer: send a prompt where its beginning was recently sent, as the engine likely still caches it."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import PREFIX_INDEX, Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.router import RouteRequest


class PrefixScorer(Scorer):
    """Share of the prompt's blocks the replica recently saw, in the request tenant's namespace.

    Sparse: candidates holding a prefix of the prompt score its matched share; no opinion when the prompt is
    shorter than one block or nothing matches. It reads the router's prefix index (prefix_index.py), whose shape
    and memory budget are set under `routing.params.prefix`; the router hashes and records prompts only for
    policies that read the index.

    Inputs: prefix_index, request.prompt_text, request.tenant
    Parameters: none of its own (the index's, under routing.params.prefix: block_chars, budget_mb, ttl, max_blocks)
    Weight: 3.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {prefix: 3.0}
            prefix: {budget_mb: 64, block_chars: 128, ttl: 600}
        ```
    """

    name = "prefix"
    # Locality weighs most, but one loaded replica's load terms (queue + in-flight + KV, up to 3.0) can outweigh a
    # partial prefix match; the imbalance rule takes over beyond that.
    weight = 3.0
    inputs = (PREFIX_INDEX, "request.prompt_text", "request.tenant")

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """Matched prefix ratio of the candidates that match (sparse)."""
        return ctx.prefix_ratios() or None
