"""Filters: drop candidates that cannot take the request. A filter that would drop all is skipped (fail open)."""

from __future__ import annotations

from collections.abc import Callable

from fleetgate.engines.registry import adapter_for
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.breaker import BreakerRegistry
from fleetgate.routing.router import RouteRequest


class ServesModel:
    """Keeps replicas that list the model.

    Inputs: request.model, replica.models
    Parameters: none (always on, first)
    """

    name = "serves_model"
    inputs: tuple[str, ...] = ("request.model", "replica.models")

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """Replicas serving request.model."""
        model = request.model
        return [r for r in candidates if model in r.models]


class Healthy:
    """Keeps replicas whose last health check (or request) succeeded.

    Inputs: replica.healthy
    Parameters: none (always on; health checks run every gateway.health_interval)
    """

    name = "healthy"
    inputs: tuple[str, ...] = ("replica.healthy",)

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """Healthy replicas."""
        return [r for r in candidates if r.healthy]


class BreakerClosed:
    """Keeps replicas whose circuit breaker lets a request through (closed, or half-open with its probe free).

    A replica's breaker opens after `failures` failed attempts (connect errors, timeouts, 5xx) within `window`
    seconds, lets one probe through after `cooldown` seconds, and closes after `successes` probes in a row.

    Inputs: replica.id
    Parameters (routing.params.breaker):
        failures: int >= 1 = 5 -- failures within the window that open the breaker
        window: float > 0 = 10.0 -- seconds the failures are counted over
        cooldown: float >= 0 = 5.0 -- seconds open before a probe may go through
        successes: int >= 1 = 2 -- probe successes in a row that close it again
        probe_timeout: float > 0 = 30.0 -- seconds after which a probe that never reported frees its slot

    Example:
        ```yaml
        routing:
          params:
            breaker: {failures: 5, window: 10, cooldown: 5, successes: 2, probe_timeout: 30}
        ```
    """

    name = "breaker"
    inputs: tuple[str, ...] = ("replica.id",)

    def __init__(self, breakers: BreakerRegistry) -> None:
        self._breakers = breakers

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """Replicas the breaker admits (without claiming the probe: only the chosen one claims it)."""
        if not self._breakers.any_tripped:
            return candidates
        available = self._breakers.available
        return [r for r in candidates if available(r.id)]


def runtime_loadable(replica: Replica, adapter: str) -> bool:
    """Default: the engine can load adapters while serving (vLLM, SGLang); llama.cpp fixes them at start."""
    return adapter_for(replica.kind).runtime_lora


class AdapterAvailable:
    """Keeps replicas that have the request's LoRA adapter loaded or can load it.

    Loadable means the engine can load adapters while serving (vLLM, SGLang); llama.cpp fixes them at start.

    Inputs: request.adapter, replica.adapters, replica.kind
    Parameters: none (always on)
    """

    name = "adapter"
    inputs: tuple[str, ...] = ("request.adapter", "replica.adapters", "replica.kind")

    def __init__(self, loadable: Callable[[Replica, str], bool] = runtime_loadable) -> None:
        self._loadable = loadable

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """All candidates when no adapter is asked for."""
        adapter = request.adapter
        if adapter is None:
            return candidates
        return [r for r in candidates if adapter in r.adapters or self._loadable(r, adapter)]


class HasRoom:
    """Keeps replicas where this gateway has fewer requests in flight than admission allows there.

    Admission counts a model's room over all its replicas, so an admitted request has a free place somewhere;
    this puts it there rather than behind a full batch because a scraped queue length (up to a scrape interval
    old) tipped the score. Only added when admission is on; fails open like every filter.

    Inputs: replica.in_flight
    Parameters: none of its own (the allowance is admission's max_in_flight_per_replica)

    Example:
        ```yaml
        admission:
          enabled: true
          max_in_flight_per_replica: null
        ```
    """

    name = "has_room"
    inputs: tuple[str, ...] = ("replica.in_flight",)

    def __init__(self, allowance: Callable[[Replica], int]) -> None:
        self._allowance = allowance

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """Replicas below their in-flight allowance."""
        allowance = self._allowance
        return [r for r in candidates if r.in_flight < allowance(r)]
