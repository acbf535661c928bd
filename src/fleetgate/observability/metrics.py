"""Prometheus metrics of the gateway: `fleetgate_*`, base units, bounded tenant label cardinality.

Per-request metrics are observed once, after the response went out. Everything that is a level (replicas,
outbox, limiter state) is read at scrape time by a collector, so it costs the hot path nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fleetgate.fleet.replicas import ReplicaRegistry
    from fleetgate.iolog.log import IOLog
    from fleetgate.metering.flusher import Flusher
    from fleetgate.metering.outbox import Outbox
    from fleetgate.routing.pipeline import RoutingPipeline
    from fleetgate.scheduling.admission import AdmissionController
    from fleetgate.serving.outcome import RequestOutcome

OTHER = "other"
# Latency buckets from 5 ms to 2 min: a warm prefix on the local fleet is ~0.1 s, a cold long prompt ~16 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class TenantLabels:
    """Caps how many distinct label values (tenants, or models a client named) the metrics carry; the rest become
    `other`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()

    def __call__(self, tenant: str) -> str:
        """The label value for a tenant."""
        if tenant in self._seen:
            return tenant
        if len(self._seen) < self.cap:
            self._seen.add(tenant)
            return tenant
        return OTHER


class GatewayMetrics:
    """All of the gateway's own metrics, in one registry served at /metrics."""

    def __init__(self, max_tenant_labels: int = 100) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.tenant_label = TenantLabels(max_tenant_labels)
        # A client can name any model (a 404 is still counted): without a cap, random names would grow the series.
        self.model_label = TenantLabels(max_tenant_labels)
        # Labelled children, looked up once per label tuple: `labels()` validates and locks on every call, which
        # cost more per request than the rest of the bookkeeping.
        self._request_children: dict[tuple[str, str, str, str], Any] = {}
        self._model_children: dict[str, tuple[Any, Any]] = {}
        self._itl_children: dict[str, Any] = {}
        self._token_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        r = self.registry
        self.requests = Counter(
            "fleetgate_requests",
            "Requests by tenant, model, outcome and routing reason.",
            ["tenant", "model", "status", "route"],
            registry=r,
        )
        self.latency = Histogram(
            "fleetgate_request_duration_seconds",
            "End-to-end request latency at the gateway.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "fleetgate_time_to_first_token_seconds",
            "Time from request arrival to the first byte from the engine.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "fleetgate_inter_token_latency_seconds",
            "Mean time between output tokens, per streamed request.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "fleetgate_tokens",
            "Tokens by tenant, model and kind (fresh input, cached input, output).",
            ["tenant", "model", "kind"],
            registry=r,
        )
        self.rejections = Counter(
            "fleetgate_limit_rejections",
            "Requests refused by a tenant limit or by admission (queue_full, deadline, kv_pressure, evicted).",
            ["tenant", "limit"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "fleetgate_queue_wait_seconds",
            "Time requests waited for room on the fleet, by priority.",
            ["priority"],
            buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )

        self.adapter_ops = Counter(
            "fleetgate_adapter_operations",
            "LoRA adapter loads and unloads on replicas (outcome: loaded, already, failed, unloaded).",
            ["replica", "outcome"],
            registry=r,
        )
        self.adapter_op_seconds = Histogram(
            "fleetgate_adapter_operation_seconds",
            "Time an engine took to load or unload a LoRA adapter.",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )

    def observe_adapter(self, replica: str, adapter: str, outcome: str, seconds: float) -> None:
        """Record one adapter load or unload (adapter names stay out of labels: operators may have thousands)."""
        self.adapter_ops.labels(replica, outcome).inc()
        self.adapter_op_seconds.labels(outcome).observe(seconds)

    def observe(self, outcome: RequestOutcome, route: str, ended_at: float) -> None:
        """Record one finished request (called after its last byte went out)."""
        tenant = self.tenant_label(outcome.tenant_name or "unauthenticated")
        model = self.model_label(outcome.model or "-")
        key = (tenant, model, outcome.status, route)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        if outcome.status == "rejected" and outcome.replica is None:
            return
        per_model = self._model_children.get(model)
        if per_model is None:
            per_model = self._model_children[model] = (self.latency.labels(model), self.ttft.labels(model))
        latency, ttft = per_model
        latency.observe(ended_at - outcome.started_at)
        if outcome.first_byte_at is not None:
            ttft.observe(outcome.first_byte_at - outcome.started_at)
        usage = outcome.usage
        if usage is None:
            return
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        tokens = self._token_children.get((tenant, model))
        if tokens is None:
            tokens = self._token_children[(tenant, model)] = (
                self.tokens.labels(tenant, model, "fresh"),
                self.tokens.labels(tenant, model, "cached"),
                self.tokens.labels(tenant, model, "output"),
            )
        tokens[0].inc(max(prompt - cached, 0))
        tokens[1].inc(cached)
        tokens[2].inc(completion)
        if outcome.stream and completion > 1 and outcome.first_byte_at is not None:
            itl = self._itl_children.get(model)
            if itl is None:
                itl = self._itl_children[model] = self.itl.labels(model)
            itl.observe((ended_at - outcome.first_byte_at) / (completion - 1))

    def observe_wait(self, priority: str, seconds: float) -> None:
        """Record how long an admitted request waited in the queue."""
        self.queue_wait.labels(priority).observe(seconds)

    def rejected(self, tenant: str, limit: str) -> None:
        """Count a refusal by a tenant limit."""
        self.rejections.labels(self.tenant_label(tenant), limit).inc()

    def add_collector(self, collector: Collector) -> None:
        """Register a scrape-time collector (replicas, outbox, ...)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


_BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class StateCollector(Collector):
    """Levels read at scrape time: replicas, the outbox and ledger delivery, the I/O log."""

    def __init__(
        self,
        registry: ReplicaRegistry,
        outbox: Outbox,
        flusher: Flusher,
        iolog: IOLog | None,
        in_flight: Callable[[], int],
        admission: AdmissionController | None = None,
        router: RoutingPipeline | None = None,
    ) -> None:
        self._replicas = registry
        self._outbox = outbox
        self._flusher = flusher
        self._iolog = iolog
        self._in_flight = in_flight
        self._admission = admission
        self._router = router

    def _engine_signals(self) -> Iterable[Metric]:
        # What the scraper read from each engine, under one name whatever the engine (vllm:*, llamacpp:*, sglang:*).
        waiting = GaugeMetricFamily("fleetgate_engine_requests_waiting", "Engine's own queue.", labels=["replica"])
        running = GaugeMetricFamily(
            "fleetgate_engine_requests_running", "Engine's running requests.", labels=["replica"]
        )
        pressure = GaugeMetricFamily(
            "fleetgate_engine_kv_pressure", "KV-cache use 0..1 (llama.cpp: busy slots).", labels=["replica"]
        )
        hit = GaugeMetricFamily(
            "fleetgate_engine_prefix_hit_ratio", "Engine prefix-cache hits / queries.", labels=["replica"]
        )
        age = GaugeMetricFamily("fleetgate_engine_scrape_age_seconds", "Age of the last scrape.", labels=["replica"])
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

    def _routing(self) -> Iterable[Metric]:
        assert self._router is not None
        breaker = GaugeMetricFamily(
            "fleetgate_replica_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["replica"]
        )
        for replica in self._replicas.all():
            state = str(self._router.breakers.state(replica.id)).lower()
            breaker.add_metric([replica.id], _BREAKER_VALUE.get(state, 0.0))
        yield breaker
        decisions = CounterMetricFamily(
            "fleetgate_route_decisions", "Routing decisions by policy and reason.", labels=["policy", "reason"]
        )
        for (policy, reason), n in self._router.stats.reasons.items():
            decisions.add_metric([policy, reason], n)
        yield decisions

    def _outbox_faults(self) -> Iterable[Metric]:
        # A full or failing disk under the outbox: refused starts (503s), records held in memory, dead letters.
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

    def collect(self) -> Iterable[Metric]:
        """Yield the current values."""
        in_flight = GaugeMetricFamily(
            "fleetgate_replica_in_flight", "Requests in flight per replica.", labels=["replica"]
        )
        healthy = GaugeMetricFamily(
            "fleetgate_replica_healthy", "1 if the replica passes health checks.", labels=["replica"]
        )
        for replica in self._replicas.all():
            in_flight.add_metric([replica.id], replica.in_flight)
            healthy.add_metric([replica.id], 1.0 if replica.healthy else 0.0)
        yield in_flight
        yield healthy
        yield from self._engine_signals()
        if self._router is not None:
            yield from self._routing()
        yield GaugeMetricFamily("fleetgate_in_flight_requests", "Requests inside the gateway.", value=self._in_flight())
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
        if self._admission is not None:
            depth = GaugeMetricFamily(
                "fleetgate_queue_depth",
                "Requests waiting for room on the fleet (the autoscaling signal).",
                labels=["model", "tenant", "priority"],
            )
            for (model, tenant, priority), n in self._admission.depths().items():
                depth.add_metric([model, tenant, priority], n)
            yield depth
            shed = CounterMetricFamily(
                "fleetgate_shed", "Requests refused by admission, by reason.", labels=["model", "reason"]
            )
            for (model, reason), n in self._admission.shed_counts().items():
                shed.add_metric([model, reason], n)
            yield shed
        if self._iolog is not None:
            yield GaugeMetricFamily("fleetgate_iolog_dropped", "I/O log records dropped.", value=self._iolog.dropped)
            yield GaugeMetricFamily(
                "fleetgate_iolog_write_errors", "I/O log write failures.", value=self._iolog.write_errors
            )
