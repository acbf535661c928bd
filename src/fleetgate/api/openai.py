"""The `/v1` surface: chat and text completions (hot path, raw ASGI) and the model list."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetgate.api.asgi import ASGIReceive, ASGISend, ClientGone
from fleetgate.api.errors import error_response
from fleetgate.api.proxy import Endpoint, Proxy
from fleetgate.errors import ApiError


class CompletionEndpoint:
    """ASGI app for one completion path; Starlette's Route passes raw ASGI through to it."""

    def __init__(self, proxy: Proxy, endpoint: Endpoint) -> None:
        self._proxy = proxy
        self._endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Serve the request."""
        try:
            await self._proxy.handle(scope, receive, send, self._endpoint)
        except ClientGone:
            return


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
