"""Levels read at scrape time, one collector per concern: the fleet, usage delivery, the gateway's own queues.

Nothing here runs on the request path: each collector reads its components' counters when /metrics (or the
dashboard's time series) collects the registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fleetgate.fleet.replicas import ReplicaRegistry
    from fleetgate.iolog.log import IOLog
    from fleetgate.metering.flusher import Flusher
    from fleetgate.metering.outbox import Outbox
    from fleetgate.routing.pipeline import RoutingPipeline
    from fleetgate.scheduling.admission import AdmissionController

_BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["replica"])


class FleetCollector(Collector):
    """The replicas: health, in flight, what each engine's metrics said, and the router's view of them."""

    def __init__(self, registry: ReplicaRegistry, router: RoutingPipeline | None = None) -> None:
        self._replicas = registry
        self._router = router

    def collect(self) -> Iterable[Metric]:
        """Yield the current values."""
        in_flight = _gauge("fleetgate_replica_in_flight", "Requests in flight per replica.")
        healthy = _gauge("fleetgate_replica_healthy", "1 if the replica passes health checks.")
        for replica in self._replicas.all():
            in_flight.add_metric([replica.id], replica.in_flight)
            healthy.add_metric([replica.id], 1.0 if replica.healthy else 0.0)
        yield in_flight
        yield healthy
        yield from self._engine_signals()
        if self._router is not None:
            yield from self._routing(self._router)

    def _engine_signals(self) -> Iterable[Metric]:
        # What the scraper read from each engine, under one name whatever the engine (vllm:*, llamacpp:*, sglang:*).
        waiting = _gauge("fleetgate_engine_requests_waiting", "Engine's own queue.")
        running = _gauge("fleetgate_engine_requests_running", "Engine's running requests.")
        pressure = _gauge("fleetgate_engine_kv_pressure", "KV-cache use 0..1 (llama.cpp: busy slots).")
        hit = _gauge("fleetgate_engine_prefix_hit_ratio", "Engine prefix-cache hits / queries.")
        age = _gauge("fleetgate_engine_scrape_age_seconds", "Age of the last scrape.")
        now = time.monotonic()
        for replica in self._replicas.all():
            m = replica.metrics
            if m is None:
                continue
            waiting.add_metric([replica.id], m.waiting)
            running.add_metric([replica.id], m.running)
            if m.pressure is not None:
                pressure.add_metric([replica.id], m.pressure)
            if m.prefix_hit_ratio is not None:
                hit.add_metric([replica.id], m.prefix_hit_ratio)
            age.add_metric([replica.id], max(now - m.scraped_at, 0.0))
        yield from (waiting, running, pressure, hit, age)

    def _routing(self, router: RoutingPipeline) -> Iterable[Metric]:
        breaker = _gauge("fleetgate_replica_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.")
        for replica in self._replicas.all():
            state = str(router.breakers.state(replica.id)).lower()
            breaker.add_metric([replica.id], _BREAKER_VALUE.get(state, 0.0))
        yield breaker
        decisions = CounterMetricFamily(
            "fleetgate_route_decisions", "Routing decisions by policy and reason.", labels=["policy", "reason"]
        )
        for (policy, reason), n in router.stats.reasons.items():
            decisions.add_metric([policy, reason], n)
        yield decisions


class DeliveryCollector(Collector):
    """Usage records on their way to the ledger and sinks: the outbox, its disk, and the flusher's consumers."""

    def __init__(self, outbox: Outbox, flusher: Flusher) -> None:
        self._outbox = outbox
        self._flusher = flusher

    def collect(self) -> Iterable[Metric]:
        """Yield the current values."""
        yield GaugeMetricFamily(
            "fleetgate_outbox_open_requests",
            "Requests started and not yet finished in the outbox.",
            value=self._outbox.open_requests,
        )
        yield GaugeMetricFamily(
            "fleetgate_outbox_backlog_segments",
            "Outbox segment files not yet fully delivered.",
            value=self._flusher.backlog_segments,
        )
        lag = GaugeMetricFamily(
            "fleetgate_delivery_failing_seconds",
            "Seconds a consumer (ledger, sink) has been failing; 0 if healthy.",
            labels=["consumer"],
        )
        delivered = GaugeMetricFamily(
            "fleetgate_delivered_events", "Events delivered by this process per consumer.", labels=["consumer"]
        )
        for consumer, failing_for, count in self._flusher.consumer_state():
            lag.add_metric([consumer], failing_for)
            delivered.add_metric([consumer], count)
        yield lag
        yield delivered
        yield from self._outbox_faults()
        yield from self._flusher_faults()

    def _outbox_faults(self) -> Iterable[Metric]:
        # A full or failing disk under the outbox: refused starts (503s), records held in memory.
        refused = CounterMetricFamily(
            "fleetgate_outbox_refused", "Requests refused because their start record could not be made durable.",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in self._outbox.refused.items():
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily(
            "fleetgate_outbox_accepting", "1 while the outbox takes new requests.", value=float(self._outbox.accepting)
        )
        yield GaugeMetricFamily(
            "fleetgate_outbox_pending_records",
            "Finish records held in memory until the disk takes them.",
            value=self._outbox.pending_lines,
        )
        failures = CounterMetricFamily(
            "fleetgate_outbox_io_failures", "Outbox write and fsync failures.", labels=["op"]
        )
        failures.add_metric(["write"], self._outbox.write_failures)
        failures.add_metric(["fsync"], self._outbox.fsync_failures)
        yield failures

    def _flusher_faults(self) -> Iterable[Metric]:
        dead = CounterMetricFamily(
            "fleetgate_dead_lettered", "Records moved to a consumer's dead-letter file.", labels=["consumer"]
        )
        for consumer, n in self._flusher.dead_lettered.items():
            dead.add_metric([consumer], n)
        yield dead
        yield CounterMetricFamily(
            "fleetgate_flusher_pass_failures", "Flusher passes that failed and were retried.",
            value=self._flusher.pass_failures,
        )  # fmt: skip


class GatewayCollector(Collector):
    """The gateway's own levels: requests inside it, its admission queue, and the I/O log's losses."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        admission: AdmissionController | None = None,
        iolog: IOLog | None = None,
    ) -> None:
        self._in_flight = in_flight
        self._admission = admission
        self._iolog = iolog

    def collect(self) -> Iterable[Metric]:
        """Yield the current values."""
        yield GaugeMetricFamily("fleetgate_in_flight_requests", "Requests inside the gateway.", value=self._in_flight())
        if self._admission is not None:
            yield from self._queue(self._admission)
        if self._iolog is not None:
            yield GaugeMetricFamily("fleetgate_iolog_dropped", "I/O log records dropped.", value=self._iolog.dropped)
            yield GaugeMetricFamily(
                "fleetgate_iolog_write_errors", "I/O log write failures.", value=self._iolog.write_errors
            )

    @staticmethod
    def _queue(admission: AdmissionController) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "fleetgate_queue_depth",
            "Requests waiting for room on the fleet (the autoscaling signal).",
            labels=["model", "tenant", "priority"],
        )
        for (model, tenant, priority), n in admission.depths().items():
            depth.add_metric([model, tenant, priority], n)
        yield depth
        shed = CounterMetricFamily(
            "fleetgate_shed", "Requests refused by admission, by reason.", labels=["model", "reason"]
        )
        for (model, reason), n in admission.shed_counts().items():
            shed.add_metric([model, reason], n)
        yield shed
