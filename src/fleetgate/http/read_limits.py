"""Slow and malformed clients: read deadlines and request-head limits for the gateway's HTTP/1.1 protocol.

A request head not complete within `header_timeout` of its first byte gets a 408, a body that stops arriving for
`body_timeout` a 408 (and the handler reading it hears its client is gone), a head over `max_header_bytes` or
with more than `max_headers` fields a 431, a request the parser rejects or a connection shut mid-request a 400:
each in OpenAI's error shape, then the connection is closed, on every path and for HTTP/1.0 and 1.1 alike. An
idle connection is closed without an answer after `keepalive_timeout` (`header_timeout` before its first request).
uvicorn's httptools protocol has none of these but the keep-alive timer, which the read deadline here replaces
(its `h11_max_incomplete_event_size` is for the h11 protocol only).

The deadline costs one timer per connection, not one per request: progress (a head begun or complete, body bytes,
a response complete) only stores a deadline, and the timer, armed for the earliest deadline it may have to meet,
re-arms itself for the current one when it rings early. A busy keep-alive connection so moves a heap entry a few
times per timeout period, where uvicorn cancels and arms a handle per response.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import ApiError, ErrorCode, InvalidRequest
from fleetgate.http.errors import error_payload

log = logging.getLogger(__name__)

# What a connection is reading, which says which deadline applies.
IDLE = 0  # no byte of a next request, nothing being answered: the keep-alive deadline
HEAD = 1  # a request head has begun and is not complete
BODY = 2  # the head is complete, the body is not
WAIT = 3  # the request is read and being answered (or was refused): the client waits for us, no deadline
_NEVER = math.inf
_DEFAULTS = GatewayConfig.model_construct()  # the defaults, without validating (or generating) anything


class ServerConfig(uvicorn.Config):
    """uvicorn's settings, and the gateway section whose read limits ReadLimitsProtocol applies (None: defaults)."""

    def __init__(self, app: Any, *, limits: GatewayConfig | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits or _DEFAULTS


class _Refused(Exception):
    """Raised in a parser callback: parsing stops and the client gets `error`."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _refusal(message: str, status: int, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> ApiError:
    return InvalidRequest(message, status=status, code=code)


class ReadLimitsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and request-head limits, answered in OpenAI's shape."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.config.limits if isinstance(self.config, ServerConfig) else _DEFAULTS
        self._header_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._keepalive_timeout = limits.keepalive_timeout
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._reading = IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER
        self._grace = False  # a head or body waited on us (reading paused, 100-continue unsent): one more period
        self._refusal: ApiError | None = None  # to answer once the response in flight is complete
        self._now = 0.0  # loop time of the data being parsed
        self._received = 0  # bytes received on the connection, and before the chunk being parsed
        self._chunk_start = 0
        self._head_from = 0  # the current head began after this many bytes received, and not after the second
        self._head_after = 0

    def notify_client_gone(self, cycle: RequestResponseCycle) -> None:
        """Tell a handler waiting for its request's body that the client is gone (a lane's callback)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """uvicorn's, then a fresh connection has `header_timeout` to begin its first request."""
        super().connection_made(transport)
        self._expect(IDLE, self.loop.time() + self._header_timeout)

    def data_received(self, data: bytes) -> None:
        """Parse what arrived; body bytes move the body deadline; a malformed or oversized head is refused."""
        if self._refusal is not None:  # refused: the answer waits for the response in flight, input is moot
            return
        self._now = self.loop.time()
        self._chunk_start = self._received
        self._received += len(data)
        if self._reading == BODY:
            self._deadline = self._now + self._body_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._stop_timer()  # the connection is the websocket protocol's now
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.error)
            else:
                if refused is not None:  # a callback failed on what the parser let through (a non-ASCII path, say)
                    log.debug("refused a request the protocol could not read", exc_info=refused)
                detail = str(exc) if refused is None else "undecodable request line or headers"
                self._refuse(_refusal(f"malformed HTTP request ({detail}); send a valid HTTP/1.1 request", 400))
        else:
            if self._reading == HEAD and self._received - self._head_after > self._max_header_bytes:
                self._refuse(self._head_too_large())  # every byte after the head's first chunk is head so far

    def on_message_begin(self) -> None:
        """uvicorn's; the head's deadline starts with its first byte."""
        super().on_message_begin()
        self._head_from, self._head_after = self._chunk_start, self._received
        self._expect(HEAD, self._now + self._header_timeout)

    def on_headers_complete(self) -> None:
        """Refuse an oversized head, else uvicorn's."""
        self.head_complete()
        super().on_headers_complete()

    def head_complete(self) -> None:
        """Refuse a head over the limits (parsing stops); else the body's deadline starts."""
        # The head lies within the bytes received since its first chunk began: counted exactly only when those
        # exceed the limit (a large body in the same read, a huge head).
        if self._received - self._head_from > self._max_header_bytes and self._head_bytes() > self._max_header_bytes:
            raise _Refused(self._head_too_large())
        if len(self.headers) > self._max_headers:
            message = f"the request has more than {self._max_headers} header fields; send fewer headers"
            raise _Refused(_refusal(message, 431, ErrorCode.HEADERS_TOO_LARGE))
        self._expect(BODY, self._now + self._body_timeout)

    def on_message_complete(self) -> None:
        """uvicorn's; the request is read: no read deadline while it is answered."""
        super().on_message_complete()
        if self.cycle is None:  # a websocket upgrade: the connection is about to change hands
            return
        if self.cycle.response_complete:  # answered before its body was all read: the connection is idle now
            self._expect(IDLE, self._now + self._keepalive_timeout)
        else:
            self._reading = WAIT

    def on_response_complete(self) -> None:
        """uvicorn's, with the read deadline instead of its keep-alive timer, and a refusal that waited for it."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            self.flow.resume_reading()
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._refusal is not None:
            self._answer(self._refusal)
        else:
            self.flow.resume_reading()
            if self._reading == WAIT:
                self._expect(IDLE, self.loop.time() + self._keepalive_timeout)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio lets it keep the transport open
        """The client shut its side: a request it cut short gets a 400 (an idle connection just closes)."""
        if self._reading not in (HEAD, BODY) or self._refusal is not None:
            return None
        message = "the connection was shut before the request was complete; send the whole request"
        self._refuse(_refusal(message + " (a body as long as its Content-Length, or ending with the last chunk)", 400))
        return self._refusal is not None  # the answer waits for the response in flight: keep the write side open

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's, and no deadline any more."""
        self._stop_timer()
        super().connection_lost(exc)

    # The read deadline

    def _expect(self, reading: int, deadline: float) -> None:
        self._reading, self._deadline = reading, deadline
        if deadline < self._timer_at:  # the timer would ring too late: bring it forward
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self.loop.call_at(deadline, self._on_deadline), deadline

    def _stop_timer(self) -> None:
        self._reading = WAIT
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, _NEVER

    def _on_deadline(self) -> None:
        """The timer rang: ring again at a deadline that moved, else close an idle connection or refuse."""
        self._timer, self._timer_at = None, _NEVER
        reading = self._reading
        if reading == WAIT or self.transport.is_closing():
            return
        now = self.loop.time()
        if reading != IDLE:
            period = self._header_timeout if reading == HEAD else self._body_timeout
            if self.flow.read_paused or (reading == BODY and self.cycle.waiting_for_100_continue):
                self._grace = True  # we are not reading (a response in flight, 100-continue unsent)
                self._deadline = max(self._deadline, now + period)
            elif self._grace:  # we read again: the client gets a whole period from now at least
                self._grace = False
                self._deadline = max(self._deadline, now + period)
        if now < self._deadline:
            self._expect(reading, self._deadline)
        elif reading == IDLE:
            self.transport.close()
        elif reading == HEAD:
            message = f"the request head was not complete within {self._header_timeout:g} s; send it whole, at once"
            self._refuse(_refusal(message, 408, ErrorCode.REQUEST_TIMEOUT))
        else:
            message = (
                f"the request body stopped arriving for {self._body_timeout:g} s before it was complete; "
                "send as many bytes as Content-Length says (or end a chunked body with its last chunk)"
            )
            self._refuse(_refusal(message, 408, ErrorCode.REQUEST_TIMEOUT))

    # Refusing a request

    def _head_bytes(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _head_too_large(self) -> ApiError:
        limit = self._max_header_bytes
        message = f"the request line and headers are larger than {limit} bytes; send fewer or shorter headers"
        return _refusal(message, 431, ErrorCode.HEADERS_TOO_LARGE)

    def _refuse(self, error: ApiError) -> None:
        """Answer `error` and close, after the response in flight if any; a handler reading the body hears it."""
        cycle: RequestResponseCycle | None = self.cycle
        if self._reading == BODY and cycle is not None:
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()  # queued behind a response in flight: it never runs
                cycle.disconnected = True
            else:
                cycle.disconnected = True  # whatever its handler sends now goes nowhere
                cycle.message_event.set()  # a handler waiting in receive() gets http.disconnect
                if cycle.response_started and not cycle.response_complete:
                    self.transport.close()  # its answer has begun: nothing else can be said
                    self._stop_timer()
                else:
                    self._answer(error)
                self.notify_client_gone(cycle)
                return
        if cycle is not None and not cycle.response_complete:
            self._refusal = error  # an earlier request is still being answered: on_response_complete follows up
            self._reading = WAIT
            self.flow.pause_reading()
            return
        self._answer(error)

    def _answer(self, error: ApiError) -> None:
        body = error_payload(error)
        parts = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        parts.append(body)
        self.transport.write(b"".join(parts))
        self.transport.close()
        self._stop_timer()
