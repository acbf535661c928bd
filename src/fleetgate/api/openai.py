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

from fleetgate.api.asgi import ASGIReceive, ASGISend, ClientGone, send_error
from fleetgate.api.errors import error_response
from fleetgate.api.proxy import Endpoint, Proxy
from fleetgate.errors import ApiError

log = logging.getLogger(__name__)
ASGIApp = Any  # an ASGI callable (Starlette's own alias is not exported in a typed way)


class CompletionEndpoint:
    """ASGI app for one completion path; Starlette's Route passes raw ASGI through to it."""

    def __init__(self, proxy: Proxy, endpoint: Endpoint) -> None:
        self._proxy = proxy
        self._endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Serve the request; the hot path's outermost boundary: a bug still answers OpenAI-shaped JSON."""
        try:
            await self._proxy.handle(scope, receive, send, self._endpoint)
        except ClientGone:
            return
        except Exception:
            log.exception("unexpected error serving %s", scope.get("path"))
            # If the response had started, the server refuses a second start: the client then sees a cut stream.
            with contextlib.suppress(RuntimeError):
                await send_error(send, ApiError("internal error in the gateway; it is logged"), None)


class FastLane:
    """Sends POSTs to the completion paths straight to their endpoints, past Starlette's middleware and route
    matching (a few percent of the gateway's CPU per request); everything else goes to the full app."""

    def __init__(self, app: ASGIApp, proxy: Proxy) -> None:
        self.app = app
        self._lanes = {
            "/v1/chat/completions": CompletionEndpoint(proxy, "chat"),
            "/v1/completions": CompletionEndpoint(proxy, "completions"),
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


def routes(proxy: Proxy) -> list[Route]:
    """The /v1 routes bound to a proxy."""

    async def list_models(request: Request) -> Response:
        try:
            principal = await proxy.gate.authenticate(request.headers.get("authorization", "").encode() or None)
        except ApiError as err:
            return error_response(err)
        created = int(time.time())
        tenant = principal.tenant
        bases = proxy.registry.models()
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": created, "owned_by": "fleetgate"}
            for name in sorted(bases)
            if tenant.allows_model(name)
        ]
        if proxy.adapters is not None:
            # Only the caller's own adapters: another tenant's adapter is never visible (vLLM's shape: `parent`).
            data += [
                {"id": a.name, "object": "model", "created": created, "owned_by": "fleetgate", "parent": a.base_model}
                for a in sorted(proxy.adapters.catalog.visible_to(tenant), key=lambda a: a.name)
                if a.base_model in bases
            ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    return [
        Route("/v1/chat/completions", CompletionEndpoint(proxy, "chat"), methods=["POST"]),
        Route("/v1/completions", CompletionEndpoint(proxy, "completions"), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
    ]
