"""The dashboard's time series: quantiles, rates and ratios from deltas of a real metrics registry."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.observability.timeseries import (
    DecisionLog,
    TimeSeries,
    histogram_quantile,
    point_between,
    read_snapshot,
    replica_rates,
)
from tests.waiting import wait_until

INF = math.inf


class Levels(Collector):
    """Stands in for the scrape-time collectors (collectors.py): the gauges the time series reads at sample time."""

    def __init__(self) -> None:
        self.depths: dict[tuple[str, str, str], float] = {}
        self.in_flight = 0.0

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("fleetgate_queue_depth", "q", labels=["model", "tenant", "priority"])
        for labels, n in self.depths.items():
            depth.add_metric(list(labels), n)
        yield depth
        yield GaugeMetricFamily("fleetgate_in_flight_requests", "f", value=self.in_flight)


def _metrics() -> tuple[GatewayMetrics, Levels]:
    metrics = GatewayMetrics(max_tenant_labels=10)
    levels = Levels()
    metrics.add_collector(levels)
    return metrics, levels


def _finish(
    metrics: GatewayMetrics, tenant: str, ttft: float, *, fresh: int = 0, cached: int = 0, out: int = 0
) -> None:
    # What GatewayMetrics.observe records for one finished request, without building a RequestOutcome.
    metrics.requests.labels(tenant, "m", "ok", "round_robin:turn").inc()
    metrics.ttft.labels("m").observe(ttft)
    metrics.tokens.labels(tenant, "m", "fresh").inc(fresh)
    metrics.tokens.labels(tenant, "m", "cached").inc(cached)
    metrics.tokens.labels(tenant, "m", "output").inc(out)


def test_histogram_quantile_follows_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.5, 20.0), (1.0, 20.0), (INF, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1 + 0.4 * 9.8 / 10)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # the first bucket starts at 0
    # Observations past the last finite bucket: Prometheus answers that bucket's upper bound.
    assert histogram_quantile(0.99, [(0.1, 0.0), (1.0, 1.0), (INF, 10.0)]) == 1.0
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(INF, 4.0), (0.1, 4.0)]) == pytest.approx(0.05)  # order does not matter


def test_quantiles_and_rates_are_per_step() -> None:
    metrics, _ = _metrics()
    ts = TimeSeries(metrics.registry, step=5, window=60)
    first = ts.sample(at=1000.0)
    assert first.requests_per_s is None and first.ttft_p50 is None  # nothing to compare the first sample with
    for _ in range(100):
        _finish(metrics, "a", 0.03, out=4)
    p = ts.sample(at=1005.0)
    assert p.requests_per_s == pytest.approx(20.0)
    assert p.output_tokens_per_s == pytest.approx(80.0)
    assert 0.025 < (p.ttft_p50 or 0) <= 0.05 and 0.025 < (p.ttft_p99 or 0) <= 0.05
    for _ in range(10):
        _finish(metrics, "a", 3.0)
    p = ts.sample(at=1010.0)
    # Only the slow requests finished in this step: the fast ones before it no longer pull the quantiles down.
    assert 2.5 < (p.ttft_p50 or 0) <= 5.0
    assert p.requests_per_s == pytest.approx(2.0)
    p = ts.sample(at=1015.0)
    assert p.ttft_p50 is None and p.ttft_p99 is None and p.requests_per_s == 0.0  # a quiet step: a gap, not 0 s


def test_cache_hit_ratio_from_token_deltas() -> None:
    metrics, _ = _metrics()
    ts = TimeSeries(metrics.registry, step=5, window=60)
    _finish(metrics, "a", 0.1, fresh=1000, cached=0)  # before the first sample: not part of any step
    ts.sample(at=0.0)
    _finish(metrics, "a", 0.1, fresh=30, cached=10)
    _finish(metrics, "b", 0.1, fresh=0, cached=60)
    assert ts.sample(at=5.0).cache_hit_ratio == pytest.approx(70 / 100)
    assert ts.sample(at=10.0).cache_hit_ratio is None  # no prompt tokens at all: unknown, not 0


def test_levels_are_summed_over_labels() -> None:
    metrics, levels = _metrics()
    levels.depths = {("m", "a", "standard"): 2, ("m", "b", "batch"): 3, ("n", "a", "standard"): 1}
    levels.in_flight = 7
    snap = read_snapshot(metrics.registry, at=1.0)
    assert (snap.queue_depth, snap.in_flight) == (6, 7)
    p = TimeSeries(metrics.registry).sample(at=1.0)
    assert (p.queue_depth, p.in_flight) == (6, 7)


def test_ring_is_bounded_and_series_is_columnar() -> None:
    metrics, levels = _metrics()
    ts = TimeSeries(metrics.registry, step=5, window=15)
    for i in range(10):
        levels.in_flight = i
        ts.sample(at=5.0 * i)
    points = ts.points()
    assert [p.at for p in points] == [35.0, 40.0, 45.0]
    series = ts.series()
    assert series["t"] == [35.0, 40.0, 45.0]
    assert series["in_flight"] == [7, 8, 9]
    assert set(series) == {
        "t",
        "ttft_p50",
        "ttft_p99",
        "requests_per_s",
        "output_tokens_per_s",
        "cache_hit_ratio",
        "queue_depth",
        "in_flight",
    }
    assert all(len(v) == 3 for v in series.values())
    # The default: 15 minutes at 5 s.
    assert TimeSeries(metrics.registry)._points.maxlen == 180
    with pytest.raises(ValueError):
        TimeSeries(metrics.registry, step=5, window=1)


def test_tenant_rates_and_throttles_over_the_window() -> None:
    metrics, _ = _metrics()
    ts = TimeSeries(metrics.registry, step=5, window=10)
    assert ts.tenant_rates() == {}
    metrics.rejected("a", "rpm")  # before the window
    ts.sample(at=0.0)
    metrics.rejected("a", "rpm")
    ts.sample(at=5.0)
    for _ in range(10):
        _finish(metrics, "a", 0.1, fresh=5, cached=5, out=2)
    metrics.rejected("a", "tpm")
    ts.sample(at=10.0)
    rates = ts.tenant_rates()
    assert rates["a"].requests_per_s == pytest.approx(2.0)
    assert rates["a"].input_tokens_per_s == pytest.approx(20.0)
    assert rates["a"].output_tokens_per_s == pytest.approx(4.0)
    assert rates["a"].throttles == 2  # the two inside the kept window, not the one before it
    series = ts.tenant_series("a")
    assert series["t"] == [5.0, 10.0]
    assert series["requests_per_s"] == [0.0, pytest.approx(2.0)]
    assert ts.tenant_series("nobody")["requests_per_s"] == [0.0, 0.0]
    ts.sample(at=15.0)  # the oldest snapshot (with the first throttle) leaves the window
    assert ts.tenant_rates()["a"].throttles == 1
    assert ts.tenant_rates()["a"].requests_per_s == 0.0


def test_counter_reset_counts_the_new_value() -> None:
    metrics, _ = _metrics()
    old = read_snapshot(metrics.registry, at=0.0)
    for _ in range(50):
        _finish(metrics, "a", 0.1, out=1)
    high = read_snapshot(metrics.registry, at=5.0)
    fresh_metrics, _ = _metrics()  # a restarted process starts again from 0
    _finish(fresh_metrics, "a", 0.1, out=1)
    after = read_snapshot(fresh_metrics.registry, at=10.0)
    assert point_between(old, high).requests_per_s == pytest.approx(10.0)
    assert point_between(high, after).requests_per_s == pytest.approx(0.2)
    assert point_between(high, high).requests_per_s is None  # no time passed: no rate


def _replica_metrics(at: float, gen: float, queries: float, hits: float) -> ReplicaMetrics:
    return ReplicaMetrics(scraped_at=at, generation_tokens=gen, prefix_queries=queries, prefix_hits=hits)


def test_replica_rates_between_scrapes() -> None:
    rates = replica_rates(_replica_metrics(10.0, 100, 1000, 500), _replica_metrics(12.0, 300, 1400, 800))
    assert rates.tokens_per_s == pytest.approx(100.0)
    assert rates.cache_hit_ratio == pytest.approx(0.75)
    idle = replica_rates(_replica_metrics(10.0, 100, 1000, 500), _replica_metrics(12.0, 100, 1000, 500))
    assert idle.tokens_per_s == 0.0 and idle.cache_hit_ratio is None
    unknown = replica_rates(ReplicaMetrics(scraped_at=1.0), ReplicaMetrics(scraped_at=2.0))
    assert unknown == type(unknown)(None, None)


def test_time_series_tracks_replica_scrapes() -> None:
    metrics, _ = _metrics()
    replica = Replica(id="r1", url="http://127.0.0.1:1")
    registry = ReplicaRegistry([replica, Replica(id="r2", url="http://127.0.0.1:2")])
    ts = TimeSeries(metrics.registry, registry, step=5, window=60)
    replica.metrics = _replica_metrics(1.0, 0, 0, 0)
    ts.sample(at=0.0)
    assert ts.replica_rates("r1") is None and ts.replica_rates("r2") is None
    replica.metrics = _replica_metrics(6.0, 50, 100, 25)
    ts.sample(at=5.0)
    assert ts.replica_rates("r1") == type(ts.replica_rates("r1"))(10.0, 0.25)
    ts.sample(at=10.0)  # the scraper did not run since: a stale rate is dropped rather than repeated
    assert ts.replica_rates("r1") is None
    replica.metrics = _replica_metrics(16.0, 150, 200, 125)
    ts.sample(at=15.0)
    assert ts.replica_rates("r1") is not None
    registry.remove("r1")
    ts.sample(at=20.0)
    assert ts.replica_rates("r1") is None


def test_decisions_are_bounded_newest_first() -> None:
    log = DecisionLog(size=3, clock=lambda: 42.0)
    for i in range(5):
        log.record_decision(f"req-{i}", "acme", "m", "r1", "round_robin:turn")
    assert [d.request_id for d in log.recent()] == ["req-4", "req-3", "req-2"]
    assert [d.request_id for d in log.recent(1)] == ["req-4"]
    metrics, _ = _metrics()
    ts = TimeSeries(metrics.registry, clock=lambda: 7.0)
    ts.record_decision("req-1", "acme", "m", "r1", "prefix:hit")
    assert ts.decisions_json() == [
        {"at": 7.0, "request_id": "req-1", "tenant": "acme", "model": "m", "replica": "r1", "route": "prefix:hit"}
    ]
    assert TimeSeries(metrics.registry).decisions._items.maxlen == 200


async def test_background_task_samples_every_step() -> None:
    metrics, levels = _metrics()
    levels.in_flight = 3
    ts = TimeSeries(metrics.registry, step=0.05, window=10)
    ts.start()
    ts.start()  # idempotent
    try:
        await wait_until(lambda: len(ts.points()) >= 4, what="four samples")
    finally:
        await ts.stop()
    n = len(ts.points())
    assert n >= 4 and ts.latest() is not None and ts.latest().in_flight == 3  # type: ignore[union-attr]
    gaps = [b.at - a.at for a, b in zip(ts.points(), ts.points()[1:], strict=False)]
    assert all(g > 0.02 for g in gaps)  # one sample per step; a loaded machine may only stretch the gaps
    await asyncio.sleep(0.15)
    assert len(ts.points()) == n  # stopped
    await ts.stop()  # stopping twice is harmless
