"""The KV scorer: KV gauge or llama.cpp slots; neutral when unknown."""

from __future__ import annotations

from fleetgate.routing.base import NEUTRAL
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers.kv import KvScorer
from tests.routing.helpers import context, metrics, replicas

NOW = 1000.0


def test_kv_scorer_uses_kv_or_slots() -> None:
    reps = replicas(4)
    reps[0].metrics = metrics(NOW, kv=0.25)
    reps[1].metrics = metrics(NOW, running=1, waiting=0, slots=2)  # llama.cpp: half the slots busy
    reps[2].metrics = metrics(NOW)  # no KV gauge, no slot count: unknown
    assert KvScorer().score(RouteRequest(model="m"), reps, context(reps)) == [0.75, 0.5, NEUTRAL, NEUTRAL]
