"""A replica's engine metrics at one scrape, parsed from its Prometheus `/metrics` text."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetgate.engines.base import MetricNames
from fleetgate.engines.prometheus import sample_values


@dataclass(frozen=True, slots=True)
class ReplicaMetrics:
    """What the engine said about its load at `scraped_at` (time.monotonic()); counters are cumulative."""

    scraped_at: float
    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float | None = None  # 0..1 as the engine reports it; None when the engine has no such gauge
    total_slots: int | None = None  # llama.cpp only (`/props`)
    prefix_queries: float | None = None  # tokens looked up in the engine's prefix cache
    prefix_hits: float | None = None  # of which found cached
    prompt_tokens: float | None = None  # all prompt tokens, cached included
    generation_tokens: float | None = None
    cached_prompt_tokens: float | None = None

    # Memory/slot pressure in 0..1, computed once here because every routing decision reads it for every replica:
    # the KV gauge, else (llama.cpp) busy plus deferred requests against the slot count; None when unknown.
    pressure: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.kv_usage is not None:
            pressure: float | None = min(1.0, max(0.0, self.kv_usage))
        elif self.total_slots:
            # A deferred request means every slot is busy, so it counts as full.
            pressure = min(1.0, (self.running + self.waiting) / self.total_slots)
        else:
            pressure = None
        object.__setattr__(self, "pressure", pressure)

    @property
    def prefix_hit_ratio(self) -> float | None:
        """Cumulative share of prompt tokens the engine found in its prefix cache."""
        if not self.prefix_queries or self.prefix_hits is None:
            return None
        return self.prefix_hits / self.prefix_queries

    def fresh(self, now: float, stale_after: float) -> bool:
        """True while the scrape is recent enough to trust."""
        return now - self.scraped_at <= stale_after


def parse_metrics(names: MetricNames, text: str, scraped_at: float, total_slots: int | None = None) -> ReplicaMetrics:
    """Build a snapshot from one `/metrics` body; raises ValueError on text the parser rejects."""
    values = sample_values(text, names.sample_names())

    def total(name: str | None) -> float | None:
        # Several label sets (vLLM's `engine` under data parallel) are parts of one replica: add them up.
        found = values.get(name) if name is not None else None
        return sum(found) if found else None

    def mean(name: str | None) -> float | None:
        found = values.get(name) if name is not None else None
        return sum(found) / len(found) if found else None

    cached = total(names.cached_prompt_tokens)
    prompt = total(names.prompt_tokens)
    if prompt is not None and names.prompt_excludes_cached:
        prompt += cached or 0.0
    queries = total(names.prefix_queries) if names.prefix_queries else prompt
    hits = total(names.prefix_hits) if names.prefix_hits else cached
    return ReplicaMetrics(
        scraped_at=scraped_at,
        waiting=total(names.waiting) or 0.0,
        running=total(names.running) or 0.0,
        kv_usage=mean(names.kv_usage),
        total_slots=total_slots,
        prefix_queries=queries,
        prefix_hits=hits,
        prompt_tokens=prompt,
        generation_tokens=total(names.generation_tokens),
        cached_prompt_tokens=cached,
    )
