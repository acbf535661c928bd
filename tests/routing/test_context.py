"""The per-decision context: loads from fresh scrapes, never below our own count; the candidates' shape cached."""

from __future__ import annotations

import random

from fleetgate.routing.context import RouterState
from fleetgate.routing.prefix_index import PrefixIndex
from fleetgate.routing.settings import RoutingSettings
from tests.routing.helpers import context, metrics, replicas

NOW = 1000.0


def test_context_load_prefers_fresh_engine_view_but_never_below_own() -> None:
    reps = replicas(3)
    reps[0].in_flight = 2
    reps[0].metrics = metrics(NOW, running=5, waiting=3)  # other gateways' traffic shows here
    reps[1].in_flight = 4
    reps[1].metrics = metrics(NOW, running=1)  # the scrape lags our own count
    reps[2].in_flight = 1
    reps[2].metrics = metrics(NOW - 60, running=50)  # stale: ignored
    assert context(reps, settings=RoutingSettings()).loads() == [8.0, 4.0, 1.0]


def test_state_reuses_the_candidates_shape_until_it_changes() -> None:
    state = RouterState(RoutingSettings(), PrefixIndex(), lambda: NOW, random.Random(0))
    reps = replicas(3)
    first = state.context(reps, [])
    assert state.context(list(reps), []).positions() is first.positions()
    changed = state.context(reps[1:], [])
    assert changed.positions() == {"r1": 0, "r2": 1}
