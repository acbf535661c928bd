"""Property tests of MemoryLimiter's buckets under random arrivals, driven by a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.tenancy.limits.base import LimitSpec, Reservation
from fleetgate.tenancy.limits.memory import MemoryLimiter
from tests.tenancy.limits.conftest import FakeClock, resolve

EPS = 1e-6


@dataclass
class Event:
    """A change to a bucket at a time: +amount taken (reservation) or -amount returned (refund)."""

    at: float
    requests: int
    tokens: int


def assert_window_bound(events: list[Event], rpm: int, tpm: int) -> None:
    """Over every window [a, b] the net take is at most capacity + rate * (b - a)."""
    for i, first in enumerate(events):
        requests = tokens = 0
        for last in events[i:]:
            requests += last.requests
            tokens += last.tokens
            span = last.at - first.at
            assert requests <= rpm + rpm / 60 * span + EPS, (first.at, last.at, requests)
            assert tokens <= tpm + tpm / 60 * span + EPS, (first.at, last.at, tokens)


arrivals = st.lists(
    st.tuples(st.floats(0, 20, allow_nan=False), st.integers(0, 400)),  # (gap since previous, tokens)
    min_size=1,
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 40), tpm=st.integers(1, 300), arrivals=arrivals)
def test_admissions_never_exceed_capacity_plus_refill(rpm: int, tpm: int, arrivals: list[tuple[float, int]]) -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock=clock)
    spec = LimitSpec(rpm=rpm, tpm=tpm)
    events: list[Event] = []
    for n, (gap, tokens) in enumerate(arrivals):
        clock.advance(gap)
        if isinstance(resolve(lim.reserve("t", str(n), spec, tokens, 0)), Reservation):
            events.append(Event(clock.now, 1, tokens))
            assert tokens <= tpm  # a request larger than the bucket is never admitted
    assert_window_bound(events, rpm, tpm)


@settings(max_examples=150, deadline=None)
@given(
    rpm=st.integers(1, 40),
    tpm=st.integers(1, 300),
    ops=st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, 400), st.floats(0, 1), st.booleans()),
        min_size=1,
        max_size=120,
    ),
)
def test_refunds_keep_the_bound_on_net_usage(rpm: int, tpm: int, ops: list[tuple[float, int, float, bool]]) -> None:
    """With actual <= reserved, reservations minus refunds in any window still respect the bound."""
    clock = FakeClock()
    lim = MemoryLimiter(clock=clock)
    spec = LimitSpec(rpm=rpm, tpm=tpm, max_concurrency=5)
    open_: list[Reservation] = []
    events: list[Event] = []
    for n, (gap, tokens, used_share, settle_first) in enumerate(ops):
        clock.advance(gap)
        if settle_first and open_:
            held = open_.pop(0)
            used = int(held.tokens * used_share)
            resolve(lim.settle(held, spec, used, 0))
            events.append(Event(clock.now, 0, used - held.tokens))
        result = resolve(lim.reserve("t", str(n), spec, tokens, 0))
        if isinstance(result, Reservation):
            open_.append(result)
            events.append(Event(clock.now, 1, tokens))
        counters = resolve(lim.counters("t", spec))
        assert counters.in_flight == len(open_) <= 5
        assert counters.tokens_available is not None and counters.tokens_available <= tpm
        assert counters.requests_available is not None and counters.requests_available <= rpm
    assert_window_bound(events, rpm, tpm)


@settings(max_examples=100, deadline=None)
@given(rpm=st.integers(1, 40), tpm=st.integers(1, 300), arrivals=arrivals, idle=st.floats(61, 10_000))
def test_idle_buckets_refill_to_exactly_capacity(
    rpm: int, tpm: int, arrivals: list[tuple[float, int]], idle: float
) -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock=clock)
    spec = LimitSpec(rpm=rpm, tpm=tpm)
    for n, (gap, tokens) in enumerate(arrivals):
        clock.advance(gap)
        resolve(lim.reserve("t", str(n), spec, tokens, 0))
        counters = resolve(lim.counters("t", spec))
        assert counters.requests_available is not None and 0 <= counters.requests_available <= rpm
        assert counters.tokens_available is not None and 0 <= counters.tokens_available <= tpm
    clock.advance(idle)  # a bucket never below zero is full again after one minute (plus float slack)
    counters = resolve(lim.counters("t", spec))
    assert (counters.requests_available, counters.tokens_available) == (rpm, tpm)
    assert isinstance(resolve(lim.reserve("t", "full", spec, tpm, 0)), Reservation)
