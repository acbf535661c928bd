"""Raw ASGI helpers for the hot path, where Starlette's Request/Response objects cost more than they give."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fleetgate.domain.errors import ApiError, InvalidRequest
from fleetgate.http.errors import error_headers, error_payload

Message = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Message]]
ASGISend = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected while we were still reading its request."""


async def read_body(receive: ASGIReceive, limit: int) -> bytes:
    """Read the whole request body, refusing more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(f"request body is larger than {limit} bytes", status=413)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json_bytes(send: ASGISend, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """Send a complete response in two ASGI messages."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: ASGISend, err: ApiError, request_id: str | None) -> None:
    """Send an OpenAI-shaped error."""
    body = error_payload(err)
    headers = [*error_headers(err, request_id), (b"content-length", str(len(body)).encode())]
    with contextlib.suppress(OSError):  # the client is already gone; nothing to tell it
        await send_json_bytes(send, err.status, body, headers)
