"""The `/v1` surface: chat and text completions (hot path, raw ASGI) and the model list."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetgate.domain.errors import ApiError
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.http.asgi import ASGIReceive, ASGISend, send_error
from fleetgate.http.errors import error_response
from fleetgate.lora.pool import AdapterPool
from fleetgate.serving.handler import CompletionHandler
from fleetgate.serving.outcome import Endpoint
from fleetgate.tenancy.gate import TenantGate

log = logging.getLogger(__name__)
ASGIApp = Any  # an ASGI callable (Starlette's own alias is not exported in a typed way)


class CompletionEndpoint:
    """ASGI app for one completion path; Starlette's Route passes raw ASGI through to it."""

    def __init__(self, handler: CompletionHandler, endpoint: Endpoint) -> None:
        self._handler = handler
        self._endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Serve the request; the handler records every outcome itself, this is only the last line of defence."""
        try:
            await self._handler.handle(scope, receive, send, self._endpoint)
        except Exception:
            log.exception("unexpected error serving %s", scope.get("path"))
            # If the response had started, the server refuses a second start: the client then sees a cut stream.
            with contextlib.suppress(RuntimeError):
                await send_error(send, ApiError("internal error in the gateway; it is logged"), None)


class FastLane:
    """Sends POSTs to the completion paths straight to their endpoints, past Starlette's middleware and route
    matching (a few percent of the gateway's CPU per request); everything else goes to the full app."""

    def __init__(self, app: ASGIApp, handler: CompletionHandler) -> None:
        self.app = app
        self._lanes = {
            "/v1/chat/completions": CompletionEndpoint(handler, "chat"),
            "/v1/completions": CompletionEndpoint(handler, "completions"),
        }
        # By raw path, for api.server.GatewayProtocol, which serves these before any ASGI scope is complete.
        self.raw_lanes = {path.encode(): lane for path, lane in self._lanes.items()}

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "http" and scope["method"] == "POST":
            lane = self._lanes.get(scope["path"])
            if lane is not None:
                await lane(scope, receive, send)
                return
        await self.app(scope, receive, send)


def routes(
    handler: CompletionHandler, gate: TenantGate, registry: ReplicaRegistry, adapters: AdapterPool | None
) -> list[Route]:
    """The /v1 routes: the completion paths (also served by the fast lane) and the tenant's model list."""

    async def list_models(request: Request) -> Response:
        try:
            principal = await gate.authenticate(
                request.headers.get("authorization", "").encode() or None,
                client=request.client.host if request.client is not None else None,
            )
        except ApiError as err:
            return error_response(err)
        created = int(time.time())
        tenant = principal.tenant
        bases = registry.models()
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": created, "owned_by": "fleetgate"}
            for name in sorted(bases)
            if tenant.allows_model(name)
        ]
        if adapters is not None:
            # Only the caller's own adapters: another tenant's adapter is never visible (vLLM's shape: `parent`).
            data += [
                {"id": a.name, "object": "model", "created": created, "owned_by": "fleetgate", "parent": a.base_model}
                for a in sorted(adapters.catalog.visible_to(tenant), key=lambda a: a.name)
                if a.base_model in bases
            ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    return [
        Route("/v1/chat/completions", CompletionEndpoint(handler, "chat"), methods=["POST"]),
        Route("/v1/completions", CompletionEndpoint(handler, "completions"), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
    ]
