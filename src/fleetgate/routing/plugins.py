"""Name -> factory registry for routing policies, so config chooses them by name."""

from __future__ import annotations

from collections.abc import Callable

from fleetgate.errors import ConfigError
from fleetgate.routing.round_robin import RoundRobinRouter
from fleetgate.routing.router import Router

ROUTERS: dict[str, Callable[[], Router]] = {
    RoundRobinRouter.name: RoundRobinRouter,
}


def make_router(name: str) -> Router:
    """Build the routing policy registered under `name`."""
    factory = ROUTERS.get(name)
    if factory is None:
        raise ConfigError(f"gateway.router: unknown policy {name!r}; known: {', '.join(sorted(ROUTERS))}")
    return factory()
