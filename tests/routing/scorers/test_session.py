"""The session scorer: 1 for the session's owner on the ring."""

from __future__ import annotations

from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.session import SessionScorer
from tests.routing.helpers import context, replicas


def test_session_scorer_marks_the_owner_only() -> None:
    reps = replicas(4)
    ctx = context(reps)
    values = SessionScorer().score(RouteRequest(model="m", session="s-1"), reps, ctx)
    assert isinstance(values, dict) and list(values.values()) == [1.0]
    assert reps[next(iter(values))].id == ctx.session_owner("s-1")
    assert SessionScorer().score(RouteRequest(model="m"), reps, ctx) is None
