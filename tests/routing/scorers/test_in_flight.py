"""The in-flight scorer: our own count, never stale."""

from __future__ import annotations

from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.in_flight import InFlightScorer
from tests.routing.helpers import context, metrics, replicas


def test_in_flight_scorer_uses_our_own_count() -> None:
    reps = replicas(2)
    reps[1].in_flight = 4
    reps[1].metrics = metrics(900.0)  # staleness is irrelevant to our own counts
    scorer = InFlightScorer(InFlightScorer.Params(scale=4.0))
    assert scorer.score(RouteRequest(model="m"), reps, context(reps)) == [1.0, 0.5]
