"""The last 15 minutes of the gateway's own metrics, sampled from its Prometheus registry every few seconds.

A background task reads `GatewayMetrics.registry` (the same numbers /metrics serves) and keeps cumulative
snapshots in a bounded ring; rates and TTFT quantiles are deltas between consecutive snapshots, the way
Prometheus' `rate()` and `histogram_quantile()` would compute them. Nothing is added to the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from fleetgate.fleet.metrics import ReplicaMetrics
    from fleetgate.fleet.replicas import ReplicaRegistry

log = logging.getLogger(__name__)

DEFAULT_STEP = 5.0
DEFAULT_WINDOW = 15 * 60.0
DEFAULT_DECISIONS = 200
TTFT = "fleetgate_time_to_first_token_seconds_bucket"
REQUESTS = "fleetgate_requests_total"
TOKENS = "fleetgate_tokens_total"
REJECTIONS = "fleetgate_limit_rejections_total"
QUEUE_DEPTH = "fleetgate_queue_depth"
IN_FLIGHT = "fleetgate_in_flight_requests"


@dataclass(slots=True)
class TenantCounts:
    """Cumulative counters of one tenant label."""

    requests: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    throttles: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative values read from the registry at `at` (wall-clock seconds)."""

    at: float
    ttft_buckets: tuple[tuple[float, float], ...]  # (le, cumulative count) summed over models, le ascending
    requests: float
    fresh_tokens: float
    cached_tokens: float
    output_tokens: float
    queue_depth: float
    in_flight: float
    tenants: dict[str, TenantCounts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Point:
    """One step of the time series: levels at `at`, rates and quantiles over the step that ended there."""

    at: float
    ttft_p50: float | None
    ttft_p99: float | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    cache_hit_ratio: float | None
    queue_depth: float
    in_flight: float


@dataclass(frozen=True, slots=True)
class TenantRates:
    """A tenant's traffic over the last step, and its throttles over the whole window."""

    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    throttles: float


@dataclass(frozen=True, slots=True)
class ReplicaRates:
    """Rates of one replica's engine counters between two scrapes."""

    tokens_per_s: float | None
    cache_hit_ratio: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    """One routing decision, as the proxy reported it."""

    at: float
    request_id: str
    tenant: str
    model: str
    replica: str
    route: str


class DecisionLog:
    """The most recent routing decisions, bounded."""

    def __init__(self, size: int = DEFAULT_DECISIONS, clock: Callable[[], float] = time.time) -> None:
        self._items: deque[Decision] = deque(maxlen=size)
        self._clock = clock

    def record_decision(self, request_id: str, tenant: str, model: str, replica: str, route: str) -> None:
        """Remember one decision (O(1), safe to call from the hot path)."""
        self._items.append(Decision(self._clock(), request_id, tenant, model, replica, route))

    def recent(self, limit: int | None = None) -> list[Decision]:
        """Newest first."""
        items = list(reversed(self._items))
        return items if limit is None else items[:limit]


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets; None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                # Like Prometheus: the +Inf bucket has no width, so answer its lower bound.
                return prev_le
            if count == prev_count:
                return le
            # Linear interpolation inside the bucket; the first bucket starts at 0 (prev_le's initial value).
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def read_snapshot(registry: CollectorRegistry, at: float) -> Snapshot:
    """Cumulative values of the metrics the dashboard charts, summed over the labels it does not show."""
    buckets: dict[float, float] = {}
    requests = fresh = cached = output = depth = in_flight = 0.0
    tenants: dict[str, TenantCounts] = {}

    def tenant(labels: dict[str, str]) -> TenantCounts:
        name = labels.get("tenant", "")
        found = tenants.get(name)
        if found is None:
            found = tenants[name] = TenantCounts()
        return found

    for family in registry.collect():
        for s in family.samples:
            if s.name == TTFT:
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == REQUESTS:
                requests += s.value
                tenant(s.labels).requests += s.value
            elif s.name == TOKENS:
                kind = s.labels.get("kind")
                if kind == "fresh":
                    fresh += s.value
                elif kind == "cached":
                    cached += s.value
                elif kind == "output":
                    output += s.value
                counts = tenant(s.labels)
                if kind == "output":
                    counts.output_tokens += s.value
                else:
                    counts.input_tokens += s.value
            elif s.name == REJECTIONS:
                tenant(s.labels).throttles += s.value
            elif s.name == QUEUE_DEPTH:
                depth += s.value
            elif s.name == IN_FLIGHT:
                in_flight += s.value
    return Snapshot(at, tuple(sorted(buckets.items())), requests, fresh, cached, output, depth, in_flight, tenants)


def _delta(new: float, old: float) -> float:
    # A counter only goes down when its process restarted; then the new value is the whole increase.
    return new - old if new >= old else new


def point_between(old: Snapshot | None, new: Snapshot) -> Point:
    """The step from `old` to `new`: rates per second, TTFT quantiles of the requests that finished in it."""
    dt = new.at - old.at if old is not None else 0.0
    if old is None or dt <= 0:
        return Point(new.at, None, None, None, None, None, new.queue_depth, new.in_flight)
    prev = dict(old.ttft_buckets)
    step_buckets = [(le, _delta(n, prev.get(le, 0.0))) for le, n in new.ttft_buckets]
    fresh = _delta(new.fresh_tokens, old.fresh_tokens)
    cached = _delta(new.cached_tokens, old.cached_tokens)
    return Point(
        at=new.at,
        ttft_p50=histogram_quantile(0.5, step_buckets),
        ttft_p99=histogram_quantile(0.99, step_buckets),
        requests_per_s=_delta(new.requests, old.requests) / dt,
        output_tokens_per_s=_delta(new.output_tokens, old.output_tokens) / dt,
        cache_hit_ratio=cached / (fresh + cached) if fresh + cached > 0 else None,
        queue_depth=new.queue_depth,
        in_flight=new.in_flight,
    )


def replica_rates(old: ReplicaMetrics, new: ReplicaMetrics) -> ReplicaRates:
    """Generated tokens/s and prefix-cache hit ratio between two scrapes of one engine."""
    dt = new.scraped_at - old.scraped_at
    tokens = None
    if dt > 0 and new.generation_tokens is not None and old.generation_tokens is not None:
        tokens = _delta(new.generation_tokens, old.generation_tokens) / dt
    ratio = None
    if None not in (new.prefix_queries, old.prefix_queries, new.prefix_hits, old.prefix_hits):
        queries = _delta(new.prefix_queries or 0.0, old.prefix_queries or 0.0)
        hits = _delta(new.prefix_hits or 0.0, old.prefix_hits or 0.0)
        ratio = min(1.0, hits / queries) if queries > 0 else None
    return ReplicaRates(tokens, ratio)


class TimeSeries:
    """A bounded ring of samples (15 minutes at 5 s by default) plus the recent routing decisions."""

    def __init__(
        self,
        registry: CollectorRegistry,
        replicas: ReplicaRegistry | None = None,
        *,
        step: float = DEFAULT_STEP,
        window: float = DEFAULT_WINDOW,
        decisions: int = DEFAULT_DECISIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if step <= 0 or window < step:
            raise ValueError("step must be > 0 and window >= step")
        self.registry = registry
        self.replicas = replicas
        self.step = step
        self.window = window
        self.clock = clock
        # One more snapshot than points: the oldest point needs the snapshot before it.
        self._snapshots: deque[Snapshot] = deque(maxlen=int(window / step) + 1)
        self._points: deque[Point] = deque(maxlen=int(window / step))
        self._replica_seen: dict[str, ReplicaMetrics] = {}
        self._replica_rates: dict[str, ReplicaRates] = {}
        self.decisions = DecisionLog(decisions, clock)
        self._task: asyncio.Task[None] | None = None

    def record_decision(self, request_id: str, tenant: str, model: str, replica: str, route: str) -> None:
        """Remember one routing decision for the dashboard (the proxy calls this)."""
        self.decisions.record_decision(request_id, tenant, model, replica, route)

    def sample(self, at: float | None = None) -> Point:
        """Read the registry (and replica scrapes) now and append one point."""
        snap = read_snapshot(self.registry, self.clock() if at is None else at)
        old = self._snapshots[-1] if self._snapshots else None
        point = point_between(old, snap)
        self._snapshots.append(snap)
        self._points.append(point)
        self._sample_replicas()
        return point

    def _sample_replicas(self) -> None:
        if self.replicas is None:
            return
        current = {r.id: r.metrics for r in self.replicas.all() if r.metrics is not None}
        for replica_id, metrics in current.items():
            seen = self._replica_seen.get(replica_id)
            if seen is None or metrics.scraped_at > seen.scraped_at:
                if seen is not None:
                    self._replica_rates[replica_id] = replica_rates(seen, metrics)
                self._replica_seen[replica_id] = metrics
            else:
                # No scrape since the last step: the scraper stalled, so the old rate would be a guess.
                self._replica_rates.pop(replica_id, None)
        for gone in set(self._replica_seen) - set(current):
            self._replica_seen.pop(gone, None)
            self._replica_rates.pop(gone, None)

    def points(self) -> list[Point]:
        """Oldest first, at most `window / step` of them."""
        return list(self._points)

    def latest(self) -> Point | None:
        """The newest point, if any."""
        return self._points[-1] if self._points else None

    def series(self) -> dict[str, list[Any]]:
        """Columns for the charts: `t` (wall seconds) and one list per field, None where unknown."""
        names = [f.name for f in fields(Point) if f.name != "at"]
        columns: dict[str, list[Any]] = {"t": [], **{n: [] for n in names}}
        for p in self._points:
            columns["t"].append(p.at)
            for n in names:
                columns[n].append(getattr(p, n))
        return columns

    def tenant_rates(self) -> dict[str, TenantRates]:
        """Per tenant label: rates over the last step, throttles since the oldest kept snapshot."""
        if len(self._snapshots) < 2:
            return {}
        first, old, new = self._snapshots[0], self._snapshots[-2], self._snapshots[-1]
        dt = new.at - old.at
        out: dict[str, TenantRates] = {}
        for name, now in new.tenants.items():
            before = old.tenants.get(name, TenantCounts())
            start = first.tenants.get(name, TenantCounts())
            out[name] = TenantRates(
                requests_per_s=_delta(now.requests, before.requests) / dt if dt > 0 else 0.0,
                input_tokens_per_s=_delta(now.input_tokens, before.input_tokens) / dt if dt > 0 else 0.0,
                output_tokens_per_s=_delta(now.output_tokens, before.output_tokens) / dt if dt > 0 else 0.0,
                throttles=_delta(now.throttles, start.throttles),
            )
        return out

    def tenant_series(self, tenant: str) -> dict[str, list[Any]]:
        """One tenant label's requests/s and output tokens/s per step, for its own usage page."""
        columns: dict[str, list[Any]] = {"t": [], "requests_per_s": [], "output_tokens_per_s": []}
        for old, new in itertools.pairwise(self._snapshots):
            dt = new.at - old.at
            a, b = old.tenants.get(tenant, TenantCounts()), new.tenants.get(tenant, TenantCounts())
            columns["t"].append(new.at)
            columns["requests_per_s"].append(_delta(b.requests, a.requests) / dt if dt > 0 else None)
            columns["output_tokens_per_s"].append(_delta(b.output_tokens, a.output_tokens) / dt if dt > 0 else None)
        return columns

    def replica_rates(self, replica_id: str) -> ReplicaRates | None:
        """Tokens/s and cache hit ratio of a replica's engine over the last step, if it was scraped in it."""
        return self._replica_rates.get(replica_id)

    def decisions_json(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Recent routing decisions as plain dicts, newest first."""
        return [asdict(d) for d in self.decisions.recent(limit)]

    def start(self) -> None:
        """Start sampling every `step` seconds (call inside the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleetgate-timeseries")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                self.sample()
            except (ValueError, ArithmeticError, LookupError, OSError):
                # A collector that fails once (e.g. a file it reads vanished) must not end the dashboard's history.
                log.exception("timeseries sample failed; trying again next step")
            deadline += self.step
            # Sleep to the next tick rather than `step` after this one, so the points stay evenly spaced.
            await asyncio.sleep(max(0.0, deadline - loop.time()))
