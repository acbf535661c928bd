"""Round-robin policy and the policy registry."""

from __future__ import annotations

from collections import Counter

import pytest

from fleetgate.domain.errors import ConfigError
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.routing.plugins import make_router
from fleetgate.routing.round_robin import RoundRobinRouter
from fleetgate.routing.router import RouteRequest


def _replicas(n: int, model: str = "m") -> list[Replica]:
    return [Replica(id=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", models={model}, healthy=True) for i in range(n)]


def test_even_spread() -> None:
    router = RoundRobinRouter()
    replicas = _replicas(3)
    picks = Counter(router.pick(RouteRequest("m"), replicas).replica.id for _ in range(300))
    assert picks == {"r0": 100, "r1": 100, "r2": 100}


def test_models_have_independent_turns() -> None:
    router = RoundRobinRouter()
    a, b = _replicas(2, "a"), _replicas(2, "b")
    assert router.pick(RouteRequest("a"), a).replica.id == "r0"
    assert router.pick(RouteRequest("b"), b).replica.id == "r0"
    assert router.pick(RouteRequest("a"), a).replica.id == "r1"


def test_decision_explains_itself() -> None:
    decision = RoundRobinRouter().pick(RouteRequest("m"), _replicas(1))
    assert (decision.policy, decision.reason) == ("round_robin", "turn")


def test_registry_by_name() -> None:
    router = make_router("round_robin")
    assert router.name == "round_robin"
    replicas = _replicas(2)
    assert [router.pick(RouteRequest("m"), replicas).replica.id for _ in range(4)] == ["r0", "r1", "r0", "r1"]
    with pytest.raises(ConfigError, match="unknown policy 'nope'; known: least_load, lora, prefix, round_robin"):
        make_router("nope")


def test_registry_candidates_skip_unhealthy_and_other_models() -> None:
    replicas = _replicas(3)
    replicas[1].healthy = False
    replicas.append(Replica(id="x", url="http://127.0.0.1:1", models={"other"}, healthy=True))
    registry = ReplicaRegistry(replicas)
    assert [r.id for r in registry.candidates("m")] == ["r0", "r2"]
    assert [r.id for r in registry.serving("m")] == ["r0", "r1", "r2"]
    assert registry.models() == {"m", "other"}
