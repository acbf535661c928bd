"""Replicas listed in the config file (`engines:`)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from fleetgate.config import EngineEndpoint
from fleetgate.fleet.discovery.base import ReplicaSpec


def endpoint_spec(index: int, endpoint: EngineEndpoint) -> ReplicaSpec:
    """A configured engine as a replica (ConfigError when its api_key_env is unset); `engine-<index>` unless named."""
    return ReplicaSpec(
        id=endpoint.id or f"engine-{index}",
        url=endpoint.url,
        kind=endpoint.kind,
        models=frozenset(endpoint.models),
        gpu_type=endpoint.gpu_type,
        api_key=endpoint.bearer_key(),
        ca_file=endpoint.ca_file,
    )


class StaticDiscovery:
    """The configured engines, always the same list (ConfigError when an engine's api_key_env is unset)."""

    def __init__(self, engines: Sequence[EngineEndpoint]) -> None:
        self._specs = [endpoint_spec(i, e) for i, e in enumerate(engines)]

    async def list(self) -> builtins.list[ReplicaSpec]:
        """The configured replicas."""
        return list(self._specs)
