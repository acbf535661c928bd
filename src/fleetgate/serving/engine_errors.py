"""An engine's error answer, reshaped into OpenAI's error format before a client sees it.

Engines disagree on the shape (vLLM: `{"error": {..., "code": 400}}` or `{"object": "error", "message", ...}`;
llama.cpp: `{"error": {"code": 400, "message", "type"}}`; others plain text) and OpenAI's SDKs expect
`{"error": {"message", "type", "param", "code"}}` with a string code. The engine's message is kept (it says what
to fix in the request); the status says whose fault it is: an engine refusing our credentials or not knowing a
model it listed is the gateway's problem (502), never the client's.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.domain.errors import ApiError, InvalidRequest, Overloaded, UpstreamError
from fleetgate.http.errors import error_payload

MAX_MESSAGE_CHARS = 2000
# Engine statuses whose meaning belongs to the gateway, not the client's request.
_GATEWAY_FAULTS = {401, 403, 404, 407, 421}


def client_error(status: int, body: bytes, replica_id: str) -> tuple[int, bytes]:
    """(status, OpenAI error body) for an engine's non-200 answer."""
    err = client_error_of(status, body, replica_id)
    return err.status, error_payload(err)


def client_error_of(status: int, body: bytes, replica_id: str) -> ApiError:
    """The ApiError a client gets for an engine's non-200 answer."""
    message, param = _message_of(body)
    if status in _GATEWAY_FAULTS or status >= 500:
        return UpstreamError(f"replica {replica_id} answered {status}: {message}")
    if status == 429:
        return Overloaded(f"replica {replica_id} is overloaded: {message}", retry_after=1)
    return InvalidRequest(message, param=param, status=status if 400 <= status < 500 else 400)


def _message_of(body: bytes) -> tuple[str, str | None]:
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _clip(body.decode(errors="replace").strip() or "the engine refused the request"), None
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or parsed
        param = error.get("param")
        return _clip(message if isinstance(message, str) else orjson.dumps(message).decode()), (
            param if isinstance(param, str) else None
        )
    if isinstance(error, str):
        return _clip(error), None
    return _clip(orjson.dumps(parsed).decode()), None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."
