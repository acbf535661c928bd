"""Relaying an engine's answer to the client: whole bodies, and SSE streams passed through as they arrive."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from fleetgate.api.asgi import ASGISend, send_json_bytes
from fleetgate.api.request import RequestOutcome
from fleetgate.errors import UpstreamError
from fleetgate.fleet.upstream import UpstreamIOError, UpstreamResponse
from fleetgate.metering.sse import SSERelay

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

# Called once the request's usage is known and before the client gets its last byte, so that a request the
# client saw complete is always in the outbox.
OnComplete = Callable[[RequestOutcome], None]


class Disconnected(Exception):
    """The client went away while we were sending."""


async def relay_whole(
    resp: UpstreamResponse,
    outcome: RequestOutcome,
    send: ASGISend,
    headers: list[tuple[bytes, bytes]],
    on_complete: OnComplete,
) -> None:
    """Read the engine's whole answer, take its usage, and send it on unchanged."""
    try:
        data = await resp.read()
    except (UpstreamIOError, TimeoutError) as exc:
        raise UpstreamError(f"replica {_rid(outcome)} broke off its response ({type(exc).__name__})") from None
    outcome.first_byte_at = time.time()
    outcome.http_status = resp.status
    if resp.status == 200:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
            outcome.usage = parsed["usage"]
    else:
        outcome.status = "engine_error" if resp.status >= 500 else "rejected"
    content_type = resp.headers.get("content-type", "application/json").encode()
    if outcome.response_parts is not None:
        outcome.response_parts.append(data)
    on_complete(outcome)
    try:
        await send_json_bytes(
            send,
            resp.status,
            data,
            [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *headers],
        )
    except OSError:
        raise Disconnected() from None


async def relay_stream(
    resp: UpstreamResponse,
    outcome: RequestOutcome,
    send: ASGISend,
    headers: list[tuple[bytes, bytes]],
    client_wants_usage: bool,
    on_complete: OnComplete,
) -> None:
    """Pass the SSE stream through event by event; end with an error event if the engine breaks off."""
    relay = SSERelay(drop_usage_event=not client_wants_usage)
    try:
        await _pump(resp, outcome, send, headers, relay, on_complete)
    finally:
        # Whatever way the stream ends (done, engine error, client gone, cancelled), metering sees what was relayed.
        _take(outcome, relay)


async def _pump(
    resp: UpstreamResponse,
    outcome: RequestOutcome,
    send: ASGISend,
    headers: list[tuple[bytes, bytes]],
    relay: SSERelay,
    on_complete: OnComplete,
) -> None:
    started = False
    try:
        async for data in resp:
            out = relay.feed(data)
            if not out:
                continue
            if not started:
                outcome.first_byte_at = time.time()
                await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
                started = True
            if outcome.response_parts is not None:
                outcome.response_parts.append(out)
            if relay.done:
                _take(outcome, relay)
                on_complete(outcome)
            await send({"type": "http.response.body", "body": out, "more_body": True})
    except (UpstreamIOError, TimeoutError) as exc:
        if not started:
            raise UpstreamError(f"replica {_rid(outcome)} broke off the stream ({type(exc).__name__})") from None
        outcome.status = "timeout" if isinstance(exc, TimeoutError) else "engine_error"
        await _end_with_error(send, f"engine stream interrupted ({type(exc).__name__})")
        return
    except OSError:
        # The ASGI server raises OSError from send() when the client is gone (ASGI spec 2.4).
        raise Disconnected() from None
    _take(outcome, relay)
    tail = relay.flush()
    try:
        if not started:
            outcome.first_byte_at = time.time()
            await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})
        if not relay.done:
            outcome.status = "engine_error"
            await _end_with_error(send, "engine stream ended without [DONE]", tail)
            return
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except OSError:
        raise Disconnected() from None


def _take(outcome: RequestOutcome, relay: SSERelay) -> None:
    outcome.usage, outcome.events, outcome.content_events = relay.usage, relay.events, relay.content_events


def _rid(outcome: RequestOutcome) -> str:
    return outcome.replica.id if outcome.replica else "?"


async def _end_with_error(send: ASGISend, message: str, tail: bytes = b"") -> None:
    err = UpstreamError(message)
    event = b"data: " + orjson.dumps({"error": {"message": message, "type": err.type, "code": err.code.value}})
    try:
        await send({"type": "http.response.body", "body": tail + event + b"\n\n", "more_body": False})
    except OSError:
        raise Disconnected() from None
