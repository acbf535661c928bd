"""The routing interface: given a request and its candidate replicas, pick one and say why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetgate.fleet.replicas import Replica


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may look at: the model and, later, tenant, session and prompt."""

    model: str
    tenant: str = "demo"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen replica and a short machine-readable reason (returned in `x-fleetgate-route`)."""

    replica: Replica
    policy: str
    reason: str


class Router(Protocol):
    """A routing policy: picks one replica from a non-empty list of healthy candidates."""

    name: str

    def pick(self, request: RouteRequest, candidates: Sequence[Replica]) -> RouteDecision:
        """Choose a replica; candidates is never empty."""
        ...
