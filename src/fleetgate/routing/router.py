"""The routing interface: given a request and its candidate replicas, pick one and say why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetgate.fleet.replicas import Replica


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may look at; build it with `route_request_from` (routing/request.py) on the hot path."""

    model: str
    tenant: str = "demo"
    session: str | None = None  # `x-session-id` header, else the body's `user`
    prompt_text: str | None = None  # messages' role + content in order (or the prompt), for the prefix index
    adapter: str | None = None  # LoRA adapter the request needs, if any
    est_tokens: int = 0  # estimated prompt tokens, counted in flight per replica while the request runs


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The chosen replica and a short machine-readable reason (returned in `x-fleetgate-route`)."""

    replica: Replica
    policy: str
    reason: str
    est_tokens: int = 0  # what the router added to `replica.in_flight_tokens`; finish() takes it back


class Router(Protocol):
    """A routing policy: picks one replica from a non-empty list of healthy candidates."""

    name: str

    def pick(self, request: RouteRequest, candidates: Sequence[Replica]) -> RouteDecision:
        """Choose a replica; candidates is never empty."""
        ...


class FeedbackRouter(Router, Protocol):
    """A Router that also hears how each attempt ended (breakers, in-flight tokens): RoutingPipeline."""

    def finish(self, decision: RouteDecision, ok: bool | None) -> None:
        """Call once per decision: True success, False replica failure, None no verdict (client hung up)."""
        ...
