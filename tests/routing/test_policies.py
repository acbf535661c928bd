"""Policies end to end through make_router: choices, tie-breaks, the imbalance rule and explanations."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.plugins import make_router
from fleetgate.routing.router import RouteRequest
from tests.routing.helpers import FakeClock, metrics, replicas

SYSTEM = "You are the support assistant of ACME. Answer briefly and politely. " * 8  # ~560 chars


def _router(name: str, params: dict[str, Any] | None = None, seed: int = 7) -> tuple[RoutingPipeline, FakeClock]:
    clock = FakeClock()
    return make_router(name, params, clock=clock, rng=random.Random(seed)), clock


def _chat(tenant: str, turns: int, session: str | None = None) -> RouteRequest:
    text = SYSTEM + "".join(f"<user>question {i} of {session or tenant}\n" for i in range(turns))
    return RouteRequest(model="m", tenant=tenant, session=session, prompt_text=text, est_tokens=len(text) // 4)


def test_least_load_uses_fresh_engine_numbers() -> None:
    router, clock = _router("least_load")
    reps = replicas(3)
    reps[0].metrics = metrics(clock.now, running=3)
    reps[1].metrics = metrics(clock.now, running=1, waiting=1)
    reps[2].in_flight = 4
    decision = router.pick(RouteRequest(model="m"), reps)
    assert (decision.replica.id, decision.policy, decision.reason) == ("r1", "least_load", "load:2")
    reps[1].metrics = metrics(clock.now - 10, running=1, waiting=1)  # stale: only our own count (0) is left
    assert router.pick(RouteRequest(model="m"), reps).replica.id == "r1"
    reps[1].in_flight = 5
    assert router.pick(RouteRequest(model="m"), reps).replica.id == "r0"


def test_equal_scores_spread_at_random_never_always_the_first() -> None:
    for name in ("score", "least_load", "prefix"):
        router, _ = _router(name)
        reps = replicas(4)
        picks = Counter(router.pick(RouteRequest(model="m"), reps).replica.id for _ in range(200))
        assert len(picks) == 4, (name, picks)
        assert max(picks.values()) < 100


def test_ties_go_to_the_least_loaded_first() -> None:
    router, _ = _router("prefix")
    reps = replicas(3)
    reps[0].in_flight, reps[1].in_flight, reps[2].in_flight = 2, 1, 2
    decision = router.pick(RouteRequest(model="m"), reps)
    assert (decision.replica.id, decision.reason) == ("r1", "tie->least_load")


def test_prefix_follows_the_conversation_and_explains() -> None:
    router, _ = _router("score")
    reps = replicas(4)
    first = router.pick(_chat("acme", 1, "s1"), reps)
    for turns in range(2, 6):
        decision = router.pick(_chat("acme", turns, "s1"), reps)
        assert decision.replica is first.replica
        assert decision.reason.startswith(("prefix:", "session:"))
    # Session and prefix agree here; with session weight 0 the reason is the prefix alone.
    router, _ = _router("score", {"weights": {"session": 0}})
    router.pick(_chat("acme", 3), reps)
    decision = router.pick(_chat("acme", 4), reps)
    assert decision.reason.startswith("prefix:0.") and float(decision.reason.split(":")[1]) >= 0.75


def test_imbalance_lets_load_win_over_locality() -> None:
    router, _ = _router("score", {"imbalance_abs": 4, "imbalance_rel": 1.5})
    reps = replicas(3)
    hot = router.pick(_chat("acme", 3), reps).replica
    hot.in_flight = 4  # 4 more than the idle ones is not beyond the threshold: locality still wins
    assert router.pick(_chat("acme", 3), reps).reason == "prefix:1.00"
    hot.in_flight = 5
    decision = router.pick(_chat("acme", 3), reps)
    assert decision.replica is not hot and decision.reason == "imbalance->least_load"
    assert router.stats.reasons[("score", "imbalance->least_load")] == 1


def test_imbalance_needs_the_relative_margin_too() -> None:
    router, _ = _router("score", {"imbalance_abs": 4, "imbalance_rel": 1.5})
    reps = replicas(3)
    hot = router.pick(_chat("acme", 3), reps).replica
    for r in reps:
        r.in_flight = 10
    hot.in_flight = 15  # 5 more, but not more than 1.5x: locality stays
    assert router.pick(_chat("acme", 3), reps).replica is hot
    hot.in_flight = 16
    assert router.pick(_chat("acme", 3), reps).reason == "imbalance->least_load"


def test_other_tenants_prompts_do_not_attract() -> None:
    router, _ = _router("prefix")
    reps = replicas(4)
    a = router.pick(_chat("tenant-a", 4, "x"), reps).replica
    a_again = router.pick(_chat("tenant-a", 4, "x"), reps)
    assert a_again.replica is a and a_again.reason == "prefix:1.00"
    b = router.pick(_chat("tenant-b", 4, "x"), reps)  # the very same text, another tenant
    assert not b.reason.startswith("prefix:")


def test_session_policy_is_sticky_and_falls_back_to_load() -> None:
    router, _ = _router("session")
    reps = replicas(5)
    owners = {router.pick(RouteRequest(model="m", session="abc"), reps).replica.id for _ in range(20)}
    assert len(owners) == 1
    decision = router.pick(RouteRequest(model="m"), reps)
    assert decision.reason == "no_session->least_load"


def test_session_removal_moves_only_that_replicas_sessions() -> None:
    router, _ = _router("session")
    reps = replicas(4)
    sessions = [f"s{i}" for i in range(400)]
    before = {s: router.pick(RouteRequest(model="m", session=s), reps).replica.id for s in sessions}
    reps[2].healthy = False  # filtered out
    after = {s: router.pick(RouteRequest(model="m", session=s), reps).replica.id for s in sessions}
    moved = [s for s in sessions if before[s] != after[s]]
    assert moved and all(before[s] == "r2" for s in moved)
    assert "r2" not in after.values()


def test_lora_prefers_loaded_then_loadable() -> None:
    router, _ = _router("lora")
    reps = replicas(3)
    reps[2].adapters = {"sql"}
    reps[2].in_flight = 2  # busier, but it has the adapter
    decision = router.pick(RouteRequest(model="m", adapter="sql"), reps)
    assert (decision.replica.id, decision.reason) == ("r2", "adapter:1.00")
    # Nobody has it loaded: llama.cpp can't load at run time, vLLM can -> only vLLM replicas are candidates.
    mixed = replicas(2, kind="llamacpp") + replicas(1, kind="vllm")
    mixed[2].id = "v"
    picks = {router.pick(RouteRequest(model="m", adapter="new"), mixed).replica.id for _ in range(20)}
    assert picks == {"v"}


def test_score_weights_come_from_params() -> None:
    reps = replicas(2)
    reps[1].adapters = {"sql"}
    reps[1].in_flight = 3
    req = RouteRequest(model="m", adapter="sql")
    loaded_wins, _ = _router("score")
    assert loaded_wins.pick(req, reps).replica.id == "r1"
    load_wins, _ = _router("score", {"weights": {"adapter": 0.1}})
    assert load_wins.pick(req, reps).replica.id == "r0"
