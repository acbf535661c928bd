"""The prefix scorer: the matched share of the prompt's blocks, sparse."""

from __future__ import annotations

from fleetgate.routing.prefix_index import PrefixIndex, PrefixSettings
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.prefix import PrefixScorer
from tests.routing.helpers import context, replicas

NOW = 1000.0
REQ = RouteRequest(model="m", tenant="t")


def test_prefix_scorer_reads_the_index() -> None:
    index = PrefixIndex(PrefixSettings(block_chars=4), clock=lambda: NOW)
    text = "abcdefghijklmnop"
    index.record("t", text, "r1")
    index.record("t", text[:8], "r2")
    reps = replicas(3)
    ctx = context(reps, index=index, hashes=index.hashes("t", text))
    assert PrefixScorer().score(REQ, reps, ctx) == {1: 1.0, 2: 0.5}  # sparse: r0 scores 0
    assert PrefixScorer().score(REQ, reps, context(reps, index=index)) is None  # no prompt: no opinion
