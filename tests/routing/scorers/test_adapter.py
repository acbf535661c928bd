"""The adapter scorer: loaded or loading first, then a free slot."""

from __future__ import annotations

from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.adapter import AdapterScorer
from tests.routing.helpers import context, replicas

SQL = RouteRequest(model="m", adapter="sql")


def test_adapter_scorer_needs_it_loaded() -> None:
    reps = replicas(2)
    reps[1].adapters = {"sql"}
    assert AdapterScorer().score(SQL, reps, context(reps)) == {1: 1.0}
    assert AdapterScorer().score(RouteRequest(model="m"), reps, context(reps)) is None


def test_adapter_scorer_prefers_loading_then_free_slots() -> None:
    reps = replicas(3)
    reps[0].adapters_loading = {"sql"}  # a load in flight counts as loaded: the burst shares it
    reps[1].adapters, reps[1].max_adapters = {"a", "b"}, 2  # full: loading there would evict one
    reps[2].adapters, reps[2].max_adapters = {"a"}, 2  # a free slot
    assert AdapterScorer().score(SQL, reps, context(reps)) == {0: 1.0, 2: 0.5}
