"""The completion paths: the one place they are declared, and the fast lane that serves them (raw ASGI, hot path).

A POST to one of COMPLETION_PATHS goes straight to its CompletionEndpoint, past the FastAPI app's middleware and
route matching (a few percent of the gateway's CPU per request). The server protocol (http.server.GatewayProtocol)
finds the same endpoints by raw path in `FastLane.raw_lanes` and serves them before any ASGI scope is complete.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fleetgate.domain.errors import ApiError, ErrorCode, InvalidRequest
from fleetgate.http.asgi import ASGIReceive, ASGISend, send_error
from fleetgate.serving.handler import CompletionHandler
from fleetgate.serving.outcome import Endpoint

log = logging.getLogger(__name__)
ASGIApp = Any  # an ASGI callable (Starlette's own alias is not exported in a typed way)

COMPLETION_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
}


class CompletionEndpoint:
    """ASGI app for one completion path."""

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
    """The gateway's ASGI app: POSTs to the completion paths go to their endpoints, everything else to `app`."""

    def __init__(self, app: ASGIApp, handler: CompletionHandler) -> None:
        self.app = app
        self.lanes = {path: CompletionEndpoint(handler, endpoint) for path, endpoint in COMPLETION_PATHS.items()}
        # By raw path, for http.server.GatewayProtocol.
        self.raw_lanes = {path.encode(): lane for path, lane in self.lanes.items()}

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "http":
            lane = self.lanes.get(scope["path"])
            if lane is not None:
                if scope["method"] == "POST":
                    await lane(scope, receive, send)
                else:  # worded like the app's other 405s (http.errors.http_exception_handler)
                    message = f"{scope['method']} {scope['path']}: Method Not Allowed"
                    await send_error(send, InvalidRequest(message, status=405, code=ErrorCode.INVALID_REQUEST), None)
                return
        await self.app(scope, receive, send)
