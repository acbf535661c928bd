"""What a routing plugin is: the Filter and Policy protocols, the Scorer base class, and the inputs they may read.

Every plugin documents itself in its class docstring, in one format (tests/routing/test_plugin_docs.py holds them
to it): a one-line summary, then why or how, then

    Inputs: request.session, session_ring        (exactly the class's `inputs`)
    Parameters (routing.params.<name>):         (or `Parameters: none`)
        <param>: <type and bounds> = <default> -- <meaning>
    Weight: 1.0                                  (scorers: the default in routing.params.weights)

    Example:
        ```yaml
        routing: ...                             (a config the router accepts, as a user would write it)
        ```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.params import NoParams
from fleetgate.routing.router import RouteRequest

if TYPE_CHECKING:
    from fleetgate.routing.context import RouteContext

NEUTRAL = 0.5  # a scorer's value when it has no (fresh) data: neither favoured nor avoided

# A dense list (one value per candidate), a sparse map {candidate index: value} (the others score 0), or None when
# the scorer has no opinion (every candidate equal): at 64 candidates, skipping whole passes keeps a decision cheap.
Scores = Sequence[float] | Mapping[int, float] | None

# What the RouteContext derives once per decision and shares with every plugin (beyond `request.<field>`,
# `replica.<attribute>`: the gateway's live view, and `metrics.<attribute>`: the replica's last scrape if fresh).
PREFIX_INDEX = "prefix_index"  # ctx.prefix_ratios(): share of the prompt's blocks each candidate recently saw
SESSION_RING = "session_ring"  # ctx.session_owner(): the candidate owning a session on the consistent-hash ring
LOADS = "loads"  # ctx.loads(): requests on each candidate (engine running + waiting when fresh, else our own)
CONTEXT_INPUTS = frozenset({PREFIX_INDEX, SESSION_RING, LOADS})
_SOURCES: Mapping[str, type[Any]] = {"request": RouteRequest, "replica": Replica, "metrics": ReplicaMetrics}


def known_input(name: str) -> bool:
    """Whether `name` is something a plugin can read: a context input or `request.`/`replica.`/`metrics.<field>`."""
    if name in CONTEXT_INPUTS:
        return True
    source, _, attribute = name.partition(".")
    kind = _SOURCES.get(source)
    if kind is None:
        return False
    return attribute in {f.name for f in dataclasses.fields(kind)} or hasattr(kind, attribute)


class Filter(Protocol):
    """Drops candidates that cannot take the request."""

    name: str
    inputs: tuple[str, ...]

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """The candidates that may take the request (may be empty; the pipeline then skips this filter)."""
        ...


class Policy(Protocol):
    """Chooses one of the filtered candidates."""

    name: str
    inputs: tuple[str, ...]  # the pipeline hashes the prompt and records it only for policies reading PREFIX_INDEX

    def choose(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> tuple[int, str]:
        """Index into candidates (never empty) and a short reason."""
        ...


class Scorer:
    """Rates every candidate in [0, 1], higher is better: subclass it, then register the class (routing/plugins.py).

    A subclass declares `name` (its key in `routing.params.weights` and its own section `routing.params.<name>`),
    `weight` (its default weight in the `score` policy; 0: off unless configured), `inputs` (what it reads, each
    `known_input`), and, if it has parameters, a nested frozen dataclass `Params` of `params.param` fields, whose
    checked instance its constructor receives. Its docstring follows the format above.
    """

    name: ClassVar[str]
    weight: ClassVar[float] = 0.0
    inputs: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[Any]] = NoParams

    def __init__(self, params: Any = None) -> None:
        """Scorers without parameters need no constructor; the others take an instance of their `Params`."""

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """One value per candidate in order, or {index: value} with the rest 0, or None: all equal."""
        raise NotImplementedError
