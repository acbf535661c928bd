"""Relaying an engine's answer to the client: whole bodies, and SSE streams passed through as they arrive."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import orjson

from fleetgate.domain.errors import UpstreamError
from fleetgate.domain.usage import NO_USAGE, usage_of
from fleetgate.engines.registry import adapter_for
from fleetgate.fleet.upstream import UpstreamIOError, UpstreamResponse
from fleetgate.http.asgi import ASGISend, send_json_bytes
from fleetgate.metering.sse import EventTooLarge, SSERelay
from fleetgate.serving.engine_errors import client_error
from fleetgate.serving.outcome import RequestOutcome

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# A whole (non-streamed) answer larger than this is not an engine's completion: the request fails instead of
# holding the gateway's memory.
MAX_RESPONSE_BYTES = 64 << 20

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
    """Read the engine's whole answer, take its usage, and send it on (engine errors in OpenAI's shape)."""
    data = await _read_bounded(resp, outcome)
    outcome.first_byte_at = time.time()
    status = resp.status
    content_type = resp.headers.get("content-type", "application/json").encode()
    if status == 200:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            outcome.usage = usage_of(parsed.get("usage"))
    else:
        status, data = client_error(status, data, _rid(outcome))
        content_type = b"application/json"
        outcome.status = "engine_error" if status >= 500 else "rejected"
        outcome.usage = NO_USAGE  # the engine refused the request: it generated nothing to bill
    outcome.http_status = status
    if outcome.response_parts is not None:
        outcome.response_parts.append(data)
    on_complete(outcome)
    outcome.response_started = True
    try:
        await send_json_bytes(
            send,
            status,
            data,
            [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *headers],
        )
    except OSError:
        raise Disconnected() from None


async def _read_bounded(resp: UpstreamResponse, outcome: RequestOutcome) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for piece in resp:
            size += len(piece)
            if size > MAX_RESPONSE_BYTES:
                raise UpstreamError(f"replica {_rid(outcome)} sent an answer larger than {MAX_RESPONSE_BYTES} bytes")
            parts.append(piece)
    except (UpstreamIOError, TimeoutError) as exc:
        raise UpstreamError(f"replica {_rid(outcome)} broke off its response ({type(exc).__name__})") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def relay_stream(
    resp: UpstreamResponse,
    outcome: RequestOutcome,
    send: ASGISend,
    headers: list[tuple[bytes, bytes]],
    client_wants_usage: bool,
    on_complete: OnComplete,
) -> None:
    """Pass the SSE stream through event by event; end with an error event if the engine breaks off."""
    kind = outcome.replica.kind if outcome.replica is not None else "openai"
    relay = SSERelay(drop_usage_event=not client_wants_usage, running_counts=adapter_for(kind).running_counts)
    try:
        await _pump(resp, outcome, send, headers, relay, on_complete)
    finally:
        if not relay.done:
            _count_unsent(resp, relay)
        # Whatever way the stream ends (done, engine error, client gone, cancelled), metering sees what was relayed.
        _take(outcome, relay)


def _count_unsent(resp: UpstreamResponse, relay: SSERelay) -> None:
    """A cut stream: what the engine already sent (its latest running counts among it) is still its work."""
    with contextlib.suppress(EventTooLarge):
        relay.feed(resp.received())


async def _pump(
    resp: UpstreamResponse,
    outcome: RequestOutcome,
    send: ASGISend,
    headers: list[tuple[bytes, bytes]],
    relay: SSERelay,
    on_complete: OnComplete,
) -> None:
    try:
        async for data in resp:
            out = relay.feed(data)
            if not out:
                continue
            if not outcome.response_started:
                await _start(send, outcome, headers)
            if outcome.response_parts is not None:
                outcome.response_parts.append(out)
            if relay.done:
                _take(outcome, relay)
                on_complete(outcome)
            await send({"type": "http.response.body", "body": out, "more_body": True})
    except (UpstreamIOError, TimeoutError, EventTooLarge) as exc:
        if not outcome.response_started:
            raise UpstreamError(f"replica {_rid(outcome)} broke off the stream ({type(exc).__name__})") from None
        outcome.status = "timeout" if isinstance(exc, TimeoutError) else "engine_error"
        await end_stream_with_error(send, UpstreamError(f"engine stream interrupted ({type(exc).__name__})"))
        return
    except OSError:
        # The ASGI server raises OSError from send() when the client is gone (ASGI spec 2.4).
        raise Disconnected() from None
    _take(outcome, relay)
    tail = relay.flush()
    try:
        if not outcome.response_started:
            await _start(send, outcome, headers)
        if not relay.done:
            outcome.status = "engine_error"
            await end_stream_with_error(send, UpstreamError("engine stream ended without [DONE]"), tail)
            return
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except OSError:
        raise Disconnected() from None


async def _start(send: ASGISend, outcome: RequestOutcome, headers: list[tuple[bytes, bytes]]) -> None:
    outcome.first_byte_at = time.time()
    outcome.response_started = True
    await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *headers]})


def _take(outcome: RequestOutcome, relay: SSERelay) -> None:
    # A stream cut before its usage block still bills the engine's own running counts where it sends them.
    outcome.usage = usage_of(relay.usage if relay.usage is not None else relay.engine_counts())
    outcome.events, outcome.content_events = relay.events, relay.content_events


def _rid(outcome: RequestOutcome) -> str:
    return outcome.replica.id if outcome.replica else "?"


async def end_stream_with_error(send: ASGISend, err: UpstreamError, tail: bytes = b"") -> None:
    """End a started SSE stream with an OpenAI-shaped error event (the status line went out long ago)."""
    event = b"data: " + orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": None, "code": err.code.value}}
    )
    try:
        await send({"type": "http.response.body", "body": tail + event + b"\n\n", "more_body": False})
    except OSError:
        raise Disconnected() from None
