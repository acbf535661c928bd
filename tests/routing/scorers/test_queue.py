"""The queue scorer: halves at its scale, neutral on a stale scrape, its scale checked by name."""

from __future__ import annotations

import pytest

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.base import NEUTRAL
from fleetgate.routing.plugins import make_router
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.queue import QueueScorer
from tests.routing.helpers import context, metrics, replicas

NOW = 1000.0
REQ = RouteRequest(model="m", tenant="t")


def test_queue_scorer_halves_at_scale_and_ignores_stale() -> None:
    reps = replicas(3)
    reps[0].metrics = metrics(NOW, waiting=0)
    reps[1].metrics = metrics(NOW - 1, waiting=4)
    reps[2].metrics = metrics(NOW - 6, waiting=100)  # older than stale_after (5 s)
    assert QueueScorer(QueueScorer.Params()).score(REQ, reps, context(reps)) == [1.0, 0.5, NEUTRAL]
    assert QueueScorer(QueueScorer.Params(scale=2.0)).score(REQ, reps, context(reps)) == [
        1.0,
        pytest.approx(1 / 3),
        NEUTRAL,
    ]


def test_queue_scale_lives_in_its_own_section() -> None:
    with pytest.raises(ConfigError, match=r"routing\.params\.queue\.scale: must be > 0"):
        make_router("score", {"queue": {"scale": 0}})
    with pytest.raises(ConfigError, match=r"routing\.params\.queue_scale: moved to routing\.params\.queue\.scale"):
        make_router("score", {"queue_scale": 4})
