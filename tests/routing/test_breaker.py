"""Circuit breaker state machine, driven by a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.routing.breaker import Breaker, BreakerRegistry, BreakerSettings, BreakerState
from tests.routing.helpers import FakeClock

S = BreakerSettings(failures=3, window=10.0, cooldown=5.0, successes=2, probe_timeout=30.0)


def _open_breaker(clock: FakeClock) -> BreakerRegistry:
    reg = BreakerRegistry(S, clock)
    for _ in range(3):
        reg.failure("r")
    assert reg.state("r") is BreakerState.OPEN
    return reg


def test_closed_opens_after_n_failures_in_window() -> None:
    clock = FakeClock()
    reg = BreakerRegistry(S, clock)
    reg.failure("r")
    reg.failure("r")
    assert reg.state("r") is BreakerState.CLOSED and reg.allow("r")
    reg.failure("r")
    assert reg.state("r") is BreakerState.OPEN
    assert not reg.allow("r") and not reg.available("r")
    assert reg.opened == {"r": 1}


def test_failures_spread_beyond_the_window_do_not_open() -> None:
    clock = FakeClock()
    reg = BreakerRegistry(S, clock)
    for _ in range(6):
        reg.failure("r")
        clock.advance(6.0)  # never 3 within 10 s
    assert reg.state("r") is BreakerState.CLOSED


def test_open_turns_half_open_after_cooldown_and_lets_one_probe() -> None:
    clock = FakeClock()
    reg = _open_breaker(clock)
    clock.advance(4.9)
    assert reg.state("r") is BreakerState.OPEN
    clock.advance(0.2)
    assert reg.state("r") is BreakerState.HALF_OPEN
    assert reg.available("r") and reg.available("r")  # asking does not claim
    assert reg.allow("r")  # the probe
    assert not reg.available("r") and not reg.allow("r")  # one at a time


def test_half_open_closes_after_m_successes() -> None:
    clock = FakeClock()
    reg = _open_breaker(clock)
    clock.advance(5.0)
    assert reg.allow("r")
    reg.success("r")
    assert reg.state("r") is BreakerState.HALF_OPEN  # 1 of 2
    assert reg.allow("r")  # the slot is free again after a verdict
    reg.success("r")
    assert reg.state("r") is BreakerState.CLOSED
    assert reg.allow("r") and reg.allow("r")


def test_failure_in_half_open_reopens_with_a_fresh_cooldown() -> None:
    clock = FakeClock()
    reg = _open_breaker(clock)
    clock.advance(5.0)
    assert reg.allow("r")
    reg.success("r")
    assert reg.allow("r")
    reg.failure("r")
    assert reg.state("r") is BreakerState.OPEN and reg.opened == {"r": 2}
    clock.advance(4.0)
    assert reg.state("r") is BreakerState.OPEN
    clock.advance(1.0)
    assert reg.state("r") is BreakerState.HALF_OPEN


def test_lost_probe_frees_its_slot_after_timeout_and_release_frees_it_now() -> None:
    clock = FakeClock()
    reg = _open_breaker(clock)
    clock.advance(5.0)
    assert reg.allow("r")
    clock.advance(29.0)
    assert not reg.allow("r")
    clock.advance(1.0)
    assert reg.allow("r")  # the first probe never reported
    reg.release("r")  # client hung up: no verdict, slot free
    assert reg.allow("r")
    assert reg.state("r") is BreakerState.HALF_OPEN


def test_late_results_while_open_change_nothing() -> None:
    clock = FakeClock()
    reg = _open_breaker(clock)
    reg.success("r")
    reg.failure("r")
    clock.advance(5.0)
    assert reg.state("r") is BreakerState.HALF_OPEN  # the late failure did not restart the cool-down


def test_unknown_replica_is_closed_and_forget_resets() -> None:
    clock = FakeClock()
    reg = _open_breaker(clock)
    assert reg.state("other") is BreakerState.CLOSED and reg.allow("other")
    reg.success("other")  # no breaker created for a success alone
    assert reg.snapshot() == {"r": "open"}
    reg.forget("r")
    assert reg.state("r") is BreakerState.CLOSED


_EVENT = st.sampled_from(["fail", "ok", "allow", "release", "tick"])
# Runs of one event (bursts of failures, idle stretches) reach the deeper states far more often than single draws.
_EVENTS = st.lists(st.tuples(_EVENT, st.integers(1, 4)), max_size=30).map(
    lambda runs: [e for e, n in runs for _ in range(n)]
)


@settings(max_examples=500, deadline=None)
@given(_EVENTS)
def test_state_machine_invariants(events: list[str]) -> None:
    b = Breaker(S)
    now, opened_at = 0.0, 0.0
    probe_at: float | None = None  # the outstanding half-open probe, as the model sees it
    for event in events:
        if event == "tick":
            now += 2.0
            continue
        b.available(now)  # let a finished cool-down show as half-open before the event (asking claims nothing)
        before = b.state
        if event == "allow":
            half_open = b.available(now) and b.state is BreakerState.HALF_OPEN
            if b.allow(now) and half_open:
                # At most one probe at a time, unless the previous one was lost (timed out).
                assert probe_at is None or now - probe_at >= S.probe_timeout
                probe_at = now
        else:
            getattr(b, {"fail": "failure", "ok": "success", "release": "release"}[event])(now)
            probe_at = None
        if b.state is BreakerState.OPEN and before is not BreakerState.OPEN:
            opened_at = now
        if b.state is BreakerState.OPEN:
            assert now - opened_at < S.cooldown  # open lasts exactly one cool-down, then half-open
        if b.state is not BreakerState.HALF_OPEN:
            probe_at = None
