"""Routing parameters from config (a plain mapping), checked, with errors that name the bad field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.breaker import BreakerSettings
from fleetgate.routing.prefix_index import PrefixSettings

# Locality weighs most, but one loaded replica's load terms (queue + in-flight + KV, up to 3.0) can outweigh a
# partial prefix match; the imbalance rule takes over beyond that. Adapter presence beats everything but prefix.
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"prefix": 3.0, "session": 1.0, "adapter": 2.0, "queue": 1.0, "in_flight": 1.0, "kv": 1.0, "tokens": 0.0}
)


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """Everything the routing policies read; build it with `from_params`."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    imbalance_abs: float = 4.0  # load wins when the chosen replica carries this many more requests than the least
    imbalance_rel: float = 1.5  # ... and this many times as many
    queue_scale: float = 4.0  # waiting requests at which the queue score halves
    in_flight_scale: float = 4.0  # own in-flight requests at which the in-flight score halves
    tokens_scale: float = 8192.0  # own in-flight prompt tokens at which the tokens score halves
    stale_after: float = 5.0  # seconds after which a scrape is ignored (match the scraper's)
    vnodes: int = 100  # points per replica on the session ring
    seed: int | None = None  # random tie-break seed (tests, benchmarks)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, where: str = "routing") -> RoutingSettings:
        """Validate a config mapping; unknown keys and bad values raise ConfigError naming `where.key`."""
        params = dict(params or {})
        own = {f.name for f in fields(cls)} - {"prefix", "breaker", "weights"}
        unknown = set(params) - own - {"prefix", "breaker", "weights"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown routing parameter")
        weights = dict(DEFAULT_WEIGHTS)
        for name, value in dict(params.get("weights") or {}).items():
            if name not in DEFAULT_WEIGHTS:
                raise ConfigError(f"{where}.weights.{name}: unknown scorer; known: {', '.join(DEFAULT_WEIGHTS)}")
            weights[name] = _number(value, f"{where}.weights.{name}", minimum=0.0)
        kwargs: dict[str, Any] = {"weights": weights}
        for name in own & set(params):
            value = params[name]
            if name == "seed":
                kwargs[name] = None if value is None else int(_number(value, f"{where}.seed"))
            elif name == "vnodes":
                kwargs[name] = int(_number(value, f"{where}.vnodes", minimum=1))
            else:
                kwargs[name] = _number(value, f"{where}.{name}", minimum=0.0)
        for scale in ("queue_scale", "in_flight_scale", "tokens_scale"):
            if kwargs.get(scale, 1.0) <= 0:
                raise ConfigError(f"{where}.{scale}: must be > 0")
        kwargs["prefix"] = _sub(PrefixSettings, params.get("prefix"), f"{where}.prefix", {"budget_mb": "budget_bytes"})
        kwargs["breaker"] = _sub(BreakerSettings, params.get("breaker"), f"{where}.breaker", {})
        return cls(**kwargs)


def _number(value: Any, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number (got {value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum:g} (got {value!r})")
    return float(value)


def _sub(kind: Any, params: Any, where: str, aliases: Mapping[str, str]) -> Any:
    if params is None:
        return kind()
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    names = {f.name: f.type for f in fields(kind)}
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        name = aliases.get(key, key)
        if name not in names:
            raise ConfigError(f"{where}.{key}: unknown parameter; known: {', '.join([*aliases, *names])}")
        number = _number(value, f"{where}.{key}", minimum=0.0)
        if key == "budget_mb":
            number *= 1024 * 1024
        kwargs[name] = int(number) if names[name] == "int" else number
    try:
        return kind(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
