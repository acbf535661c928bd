"""Replicas listed in the config file (`engines:`)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from fleetgate.config import EngineEndpoint
from fleetgate.fleet.discovery.base import ReplicaSpec


class StaticDiscovery:
    """The configured engines, always the same list (ConfigError when an engine's api_key_env is unset)."""

    def __init__(self, engines: Sequence[EngineEndpoint]) -> None:
        self._specs = [
            ReplicaSpec(
                id=e.id or f"engine-{i}",  # same default ids as app.remote_replicas
                url=e.url,
                kind=e.kind,
                models=frozenset(e.models),
                gpu_type=e.gpu_type,
                api_key=e.bearer_key(),
                ca_file=e.ca_file,
            )
            for i, e in enumerate(engines)
        ]

    async def list(self) -> builtins.list[ReplicaSpec]:
        """The configured replicas."""
        return list(self._specs)
