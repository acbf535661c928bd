"""`routing.params` checked: the router's own settings at the top, then one section per plugin.

```yaml
routing:
  policy: score
  params:
    seed: null              # the router's own (RoutingSettings): tie-break seed, metric freshness, the
    stale_after: 5.0        # session ring's points, and the imbalance rule of the scoring policies
    vnodes: 100
    imbalance_abs: 4.0
    imbalance_rel: 1.5
    weights: {prefix: 3.0, queue: 1.0}      # per scorer, over each scorer's default weight
    prefix: {budget_mb: 64, block_chars: 128, ttl: 600, max_blocks: 512}   # the prefix index
    breaker: {failures: 5, window: 10, cooldown: 5, successes: 2, probe_timeout: 30}
    queue: {scale: 4.0}     # each scorer's own section, named after it (see its docstring)
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.breaker import BreakerSettings
from fleetgate.routing.params import mapping, number, param, parameters, parse_section
from fleetgate.routing.prefix_index import PrefixParams

# Keys that moved into their scorer's section; the old spelling gets an error saying where to.
MOVED: Mapping[str, str] = {
    "queue_scale": "queue.scale",
    "in_flight_scale": "in_flight.scale",
    "tokens_scale": "tokens.scale",
}


@parameters
class RoutingSettings:
    """The router's own parameters: the top level of `routing.params` (each plugin has its own section)."""

    imbalance_abs: float = param(4.0, ge=0)  # load wins when the chosen replica carries this many more requests
    imbalance_rel: float = param(1.5, ge=0)  # ... and this many times as many as the least loaded
    stale_after: float = param(5.0, ge=0)  # seconds after which a scrape is ignored (match the scraper's)
    vnodes: int = param(100, ge=1)  # points per replica on the session ring
    seed: int | None = None  # random tie-break seed (tests, benchmarks)


OWN_KEYS = frozenset(f.name for f in dataclasses.fields(RoutingSettings))
# Top-level keys no scorer may take as its section name.
RESERVED = OWN_KEYS | {"weights", "prefix", "breaker"} | set(MOVED)


@dataclass(frozen=True, slots=True)
class RoutingParams:
    """All of `routing.params`, checked: the router's settings, scorer weights, and every section."""

    settings: RoutingSettings = field(default_factory=RoutingSettings)
    weights: Mapping[str, float] = field(default_factory=dict)  # every registered scorer, in registration order
    prefix: PrefixParams = field(default_factory=PrefixParams)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    sections: Mapping[str, Any] = field(default_factory=dict)  # scorer name -> its checked Params

    @classmethod
    def parse(
        cls, raw: Any, scorers: Mapping[str, type[Any]], weights: Mapping[str, float], where: str = "routing.params"
    ) -> RoutingParams:
        """Check a config mapping against `scorers` (name -> Params class) and their default `weights`."""
        params = mapping(raw, where)
        for key in params:
            if key in MOVED:
                raise ConfigError(f"{where}.{key}: moved to {where}.{MOVED[key]}")
            if key not in RESERVED and key not in scorers:
                known = ", ".join([*sorted(RESERVED - set(MOVED)), *(s for s in scorers if s not in RESERVED)])
                raise ConfigError(f"{where}.{key}: unknown routing parameter or scorer; known: {known}")
        own = {key: value for key, value in params.items() if key in OWN_KEYS}
        return cls(
            settings=parse_section(RoutingSettings, own, where),
            weights=_weights(params.get("weights"), weights, f"{where}.weights"),
            prefix=parse_section(PrefixParams, params.get("prefix"), f"{where}.prefix"),
            breaker=parse_section(BreakerSettings, params.get("breaker"), f"{where}.breaker"),
            sections={
                name: parse_section(kind, params.get(name), f"{where}.{name}")
                for name, kind in scorers.items()
                if name not in RESERVED
            },
        )


def _weights(raw: Any, defaults: Mapping[str, float], where: str) -> dict[str, float]:
    weights = dict(defaults)
    for name, value in mapping(raw, where).items():
        if name not in defaults:
            raise ConfigError(f"{where}.{name}: unknown scorer; known: {', '.join(defaults)}")
        weights[name] = number(value, f"{where}.{name}", ge=0.0)
    return weights
