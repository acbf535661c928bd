"""Prometheus metrics of the gateway: `fleetgate_*`, base units, bounded tenant label cardinality.

Per-request metrics are observed once, after the response went out. Everything that is a level (replicas,
outbox, limiter state) is read at scrape time by a collector (collectors.py), so it costs the hot path nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector

from fleetgate.domain.usage import Usage

if TYPE_CHECKING:
    pass

OTHER = "other"
# Latency buckets from 5 ms to 2 min: a warm prefix on the local fleet is ~0.1 s, a cold long prompt ~16 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class ObservedRequest(Protocol):
    """What metrics read of a finished request (serving's RequestOutcome is one; observability sits below it)."""

    @property
    def tenant_name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def replica(self) -> object | None: ...
    @property
    def started_at(self) -> float: ...
    @property
    def first_byte_at(self) -> float | None: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def stream(self) -> bool: ...


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

    def observe(self, outcome: ObservedRequest, route: str, ended_at: float) -> None:
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
        prompt, cached, completion = usage
        tokens = self._token_children.get((tenant, model))
        if tokens is None:
            tokens = self._token_children[(tenant, model)] = (
                self.tokens.labels(tenant, model, "fresh"),
                self.tokens.labels(tenant, model, "cached"),
                self.tokens.labels(tenant, model, "output"),
            )
        tokens[0].inc(prompt - cached)
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
