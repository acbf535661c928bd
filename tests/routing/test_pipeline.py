"""The routing loop: filters (and failing open), breaker probes, in-flight tokens, timing and reason counters."""

from __future__ import annotations

import random

import pytest

from fleetgate.routing.breaker import BreakerState
from fleetgate.routing.filters import HasRoom
from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.plugins import SCORERS, make_router
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.stats import reason_kind
from tests.routing.helpers import FakeClock, metrics, replicas

BREAKER = {"failures": 2, "window": 10, "cooldown": 5, "successes": 1}


def _router(name: str = "score") -> tuple[RoutingPipeline, FakeClock]:
    clock = FakeClock()
    return make_router(name, {"breaker": BREAKER}, clock=clock, rng=random.Random(1)), clock


def test_open_breaker_takes_a_replica_out_until_its_probe_succeeds() -> None:
    clock = FakeClock()
    router = make_router("round_robin", {"breaker": BREAKER}, clock=clock)
    reps = replicas(2)
    req = RouteRequest(model="m")
    for _ in range(2):
        decision = router.pick(req, [reps[0]])
        router.finish(decision, ok=False)
    assert router.breakers.state("r0") is BreakerState.OPEN
    assert {router.pick(req, reps).replica.id for _ in range(6)} == {"r1"}
    clock.advance(5)
    probe = next(d for d in (router.pick(req, reps) for _ in range(2)) if d.replica.id == "r0")
    assert {router.pick(req, reps).replica.id for _ in range(4)} == {"r1"}  # one probe at a time
    router.finish(probe, ok=True)
    assert router.breakers.state("r0") is BreakerState.CLOSED
    assert {router.pick(req, reps).replica.id for _ in range(4)} == {"r0", "r1"}


def test_filters_fail_open_and_say_so() -> None:
    router, _ = _router()
    reps = replicas(2)
    for r in reps:
        for _ in range(2):
            router.breakers.failure(r.id)
    decision = router.pick(RouteRequest(model="m"), reps)
    assert decision.reason.endswith(";fallback=breaker")
    assert reason_kind(decision.reason) in ("tie->random", "tie->least_load", "only")
    assert router.stats.fallbacks == {"breaker": 1}


def test_filters_drop_wrong_model_unhealthy_and_missing_adapter() -> None:
    router, _ = _router()
    reps = replicas(4)
    reps[0].models = {"other"}
    reps[1].healthy = False
    reps[2].kind = "llamacpp"  # adapters fixed at start, and not this one
    picks = {router.pick(RouteRequest(model="m", adapter="sql"), reps).replica.id for _ in range(10)}
    assert picks == {"r3"}


def test_has_room_puts_an_admitted_request_where_admission_counted_room() -> None:
    clock = FakeClock()
    reps = replicas(2)
    reps[0].in_flight, reps[1].in_flight = 2, 1  # two allowed on each: only r1 has room
    reps[0].metrics = metrics(clock.now, waiting=0)
    reps[1].metrics = metrics(clock.now, waiting=2)  # a scrape caught a request between engine steps
    plain = make_router("score", {"breaker": BREAKER}, clock=clock, rng=random.Random(1))
    assert {plain.pick(RouteRequest(model="m"), reps).replica.id for _ in range(5)} == {"r0"}  # behind a full batch
    room = make_router("score", clock=clock, rng=random.Random(1), extra_filters=[HasRoom(lambda r: 2)])
    assert {room.pick(RouteRequest(model="m"), reps).replica.id for _ in range(5)} == {"r1"}
    reps[1].in_flight = 2
    decision = room.pick(RouteRequest(model="m"), reps)  # no room anywhere: fails open and says so
    assert decision.reason.endswith(";fallback=has_room")


def test_in_flight_tokens_are_counted_until_finish() -> None:
    router, _ = _router("least_load")
    reps = replicas(1)
    decision = router.pick(RouteRequest(model="m", est_tokens=500), reps)
    assert reps[0].in_flight_tokens == 500 and decision.est_tokens == 500
    router.finish(decision, ok=None)  # no verdict: nothing counted against the breaker
    assert reps[0].in_flight_tokens == 0
    assert router.breakers.snapshot() == {}


def test_every_plugin_is_timed_and_every_decision_counted() -> None:
    router, _ = _router()
    reps = replicas(3)
    for i in range(5):
        router.pick(RouteRequest(model="m", tenant="t", prompt_text=f"{i}" * 200, session="s"), reps)
    timings = router.stats.timings
    expected = {"pick", "policy:score", "prefix_record"} | {
        f"filter:{f}" for f in ("serves_model", "healthy", "breaker", "adapter")
    }
    expected |= {f"scorer:{s}" for s, w in SCORERS.default_weights().items() if w > 0}
    assert set(timings) == expected
    assert all(calls == 5 and ns > 0 for calls, ns in timings.values())
    assert sum(router.stats.reasons.values()) == 5
    snap = router.stats.snapshot()
    assert set(snap) == {"plugins", "reasons", "fallbacks"}


def test_prompt_hashed_once_per_request_across_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    router, _ = _router("prefix")
    calls: list[str] = []
    real = router.index.hashes

    def counting(tenant: str, text: str) -> list[int]:
        calls.append(tenant)
        return real(tenant, text)

    monkeypatch.setattr(router.index, "hashes", counting)
    req = RouteRequest(model="m", tenant="t", prompt_text="p" * 300)
    reps = replicas(2)
    router.pick(req, reps)
    router.pick(req, reps[1:])  # the retry
    assert len(calls) == 1
    router.pick(RouteRequest(model="m", tenant="t", prompt_text="p" * 300), reps)
    assert len(calls) == 2


def test_round_robin_and_least_load_do_not_fill_the_index() -> None:
    for name in ("round_robin", "least_load", "session"):
        router, _ = _router(name)
        router.pick(RouteRequest(model="m", prompt_text="x" * 1000), replicas(2))
        assert len(router.index) == 0
