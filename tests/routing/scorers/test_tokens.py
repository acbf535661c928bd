"""The tokens scorer: our own in-flight prompt tokens; off unless weighted."""

from __future__ import annotations

import random

from fleetgate.routing.plugins import make_router
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.tokens import TokensScorer
from tests.routing.helpers import context, metrics, replicas


def test_tokens_scorer_uses_our_own_count() -> None:
    reps = replicas(2)
    reps[1].in_flight_tokens = 8192
    reps[1].metrics = metrics(900.0)  # staleness is irrelevant to our own counts
    scorer = TokensScorer(TokensScorer.Params())
    assert scorer.score(RouteRequest(model="m"), reps, context(reps)) == [1.0, 0.5]


def test_tokens_scorer_is_off_by_default_and_weighted_on() -> None:
    assert "scorer:tokens" not in _timed({})
    assert "scorer:tokens" in _timed({"weights": {"tokens": 1.0}, "tokens": {"scale": 1024}})


def _timed(params: dict[str, object]) -> set[str]:
    router = make_router("score", params, rng=random.Random(0))
    router.pick(RouteRequest(model="m"), replicas(2))
    return set(router.stats.timings)
