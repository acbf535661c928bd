"""The session scorer: keep a conversation on the replica its session hashes to."""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import SESSION_RING, Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.router import RouteRequest


class SessionScorer(Scorer):
    """1 for the replica that owns the request's session on the consistent-hash ring of the candidates.

    The session key is the `x-session-id` header, else the body's `user`; a replica leaving moves only its own
    sessions. The ring's points per replica are the router's `routing.params.vnodes`.

    Inputs: request.session, session_ring
    Parameters: none
    Weight: 1.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {session: 1.0}
            vnodes: 100
        ```
    """

    name = "session"
    weight = 1.0
    inputs = ("request.session", SESSION_RING)

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """1.0 for the session's owner (sparse); no opinion without a session."""
        if request.session is None:
            return None
        owner = ctx.session_owner(request.session)
        return {ctx.positions()[owner]: 1.0} if owner is not None else None
