"""Each scorer on its own: values in [0, 1], stale data neutral."""

from __future__ import annotations

from fleetgate.routing.prefix_index import PrefixIndex, PrefixSettings
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers import (
    NEUTRAL,
    AdapterScorer,
    InFlightScorer,
    KvScorer,
    PrefixScorer,
    QueueScorer,
    SessionScorer,
    TokensScorer,
)
from fleetgate.routing.settings import RoutingSettings
from tests.routing.helpers import context, metrics, replicas

NOW = 1000.0
REQ = RouteRequest(model="m", tenant="t")


def test_prefix_scorer_reads_the_index() -> None:
    index = PrefixIndex(PrefixSettings(block_chars=4), clock=lambda: NOW)
    text = "abcdefghijklmnop"
    index.record("t", text, "r1")
    index.record("t", text[:8], "r2")
    reps = replicas(3)
    ctx = context(reps, index=index, hashes=index.hashes("t", text))
    assert PrefixScorer().score(REQ, reps, ctx) == {1: 1.0, 2: 0.5}  # sparse: r0 scores 0
    assert PrefixScorer().score(REQ, reps, context(reps, index=index)) is None  # no prompt: no opinion


def test_session_scorer_marks_the_owner_only() -> None:
    reps = replicas(4)
    ctx = context(reps)
    values = SessionScorer().score(RouteRequest(model="m", session="s-1"), reps, ctx)
    assert isinstance(values, dict) and list(values.values()) == [1.0]
    assert reps[next(iter(values))].id == ctx.session_owner("s-1")
    assert SessionScorer().score(REQ, reps, ctx) is None


def test_adapter_scorer_needs_it_loaded() -> None:
    reps = replicas(2)
    reps[1].adapters = {"sql"}
    assert AdapterScorer().score(RouteRequest(model="m", adapter="sql"), reps, context(reps)) == {1: 1.0}
    assert AdapterScorer().score(REQ, reps, context(reps)) is None


def test_adapter_scorer_prefers_loading_then_free_slots() -> None:
    reps = replicas(3)
    reps[0].adapters_loading = {"sql"}  # a load in flight counts as loaded: the burst shares it
    reps[1].adapters, reps[1].max_adapters = {"a", "b"}, 2  # full: loading there would evict one
    reps[2].adapters, reps[2].max_adapters = {"a"}, 2  # a free slot
    assert AdapterScorer().score(RouteRequest(model="m", adapter="sql"), reps, context(reps)) == {0: 1.0, 2: 0.5}


def test_queue_scorer_halves_at_scale_and_ignores_stale() -> None:
    reps = replicas(3)
    reps[0].metrics = metrics(NOW, waiting=0)
    reps[1].metrics = metrics(NOW - 1, waiting=4)
    reps[2].metrics = metrics(NOW - 6, waiting=100)  # older than stale_after (5 s)
    assert QueueScorer(4.0).score(REQ, reps, context(reps)) == [1.0, 0.5, NEUTRAL]


def test_in_flight_and_tokens_scorers_use_our_own_counts() -> None:
    reps = replicas(2)
    reps[1].in_flight, reps[1].in_flight_tokens = 4, 8192
    reps[1].metrics = metrics(NOW - 100)  # staleness is irrelevant to our own counts
    assert InFlightScorer(4.0).score(REQ, reps, context(reps)) == [1.0, 0.5]
    assert TokensScorer(8192.0).score(REQ, reps, context(reps)) == [1.0, 0.5]


def test_kv_scorer_uses_kv_or_slots() -> None:
    reps = replicas(4)
    reps[0].metrics = metrics(NOW, kv=0.25)
    reps[1].metrics = metrics(NOW, running=1, waiting=0, slots=2)  # llama.cpp: half the slots busy
    reps[2].metrics = metrics(NOW)  # no KV gauge, no slot count: unknown
    assert KvScorer().score(REQ, reps, context(reps)) == [0.75, 0.5, NEUTRAL, NEUTRAL]


def test_context_load_prefers_fresh_engine_view_but_never_below_own() -> None:
    reps = replicas(3)
    reps[0].in_flight = 2
    reps[0].metrics = metrics(NOW, running=5, waiting=3)  # other gateways' traffic shows here
    reps[1].in_flight = 4
    reps[1].metrics = metrics(NOW, running=1)  # the scrape lags our own count
    reps[2].in_flight = 1
    reps[2].metrics = metrics(NOW - 60, running=50)  # stale: ignored
    assert context(reps, settings=RoutingSettings()).loads() == [8.0, 4.0, 1.0]
