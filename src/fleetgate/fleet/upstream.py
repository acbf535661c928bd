"""The hot path's upstream HTTP/1.1 client: pooled keep-alive connections, httptools parsing, nothing else.

aiohttp's client spent ~90 µs of CPU per proxied request here (its request and response objects, header
handling, payload registry, timers); this one spends a few µs, because a completion request is always the same
shape: one POST of a JSON body to an engine we know, answered by a JSON body or an SSE stream. aiohttp stays the
client for everything off the hot path (health, metrics, model lists, adapter loads, tokenize).

An engine's base URL may be https:// (TLS with the pool's SSL context, the host checked against its certificate)
and may carry a path prefix (`https://host/some/prefix`: joined in front of every path); an engine that needs a key
gets `Authorization: Bearer <key>` on every request, the key coming from `api_key_for(base_url)` (the replica
registry), looked up once per base URL like the rest of the request head.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

# A connection the engine closes this soon after a chunked answer was closed because of it, not for idleness.
_CLOSE_AFTER_STREAM_WINDOW = 1.0
# Past this many unread body bytes the connection stops reading from the engine until the relay catches up.
_HIGH_WATER = 256 * 1024


class Origin(NamedTuple):
    """Where a base URL's requests go and the request-head parts that depend on it."""

    key: tuple[str, int, bool]  # host, port, TLS: what a pooled connection can be reused for
    prefix: bytes  # path prefix, joined in front of every path
    host_header: bytes
    auth_header: bytes  # b"" or b"authorization: Bearer <key>\r\n"


class UpstreamIOError(Exception):
    """The engine could not be reached, or broke the connection; `before_response` says whether it answered."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class ConnectFailed(UpstreamIOError):
    """No TCP connection could be opened to the engine (it is down, or not listening)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time and hands its body over in pieces."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.key: tuple[str, int, bool] = ("", 0, False)
        self.closed_at: float | None = None
        self.chunked = False  # the last answer came in chunked encoding (a stream)
        self._parser = httptools.HttpResponseParser(self)
        self._headers_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamIOError | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (uvloop's transports are not asyncio.Transport subclasses, hence the cast)."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a malformed answer breaks the connection."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamIOError(f"malformed HTTP response: {exc}", before_response=not self.status))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """The engine closed or reset the connection: whoever waits learns it."""
        self.closed = True
        self.closed_at = time.monotonic()
        if not self.complete:
            answered = self._headers_waiter is None and self.status != 0
            reason = f" ({type(exc).__name__})" if exc is not None else ""
            self._fail(UpstreamIOError(f"engine closed the connection{reason}", before_response=not answered))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header (names lower-cased)."""
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        """The status line and headers are in: wake the request."""
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()  # only meaningful until the message completes
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "")
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        """Queue a piece of body (chunked encoding already removed by the parser)."""
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        """The whole response is in."""
        self.complete = True
        self._wake()

    # -- used by UpstreamResponse
    def begin(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Reset for a new exchange; the future resolves when the response headers arrived."""
        self.status, self.headers, self.complete, self.keep_alive, self.error = 0, {}, False, False, None
        self._body.clear()
        self._buffered = 0
        waiter: asyncio.Future[None] = loop.create_future()
        self._headers_waiter = waiter
        return waiter

    def take(self) -> bytes | None:
        """The body bytes received so far (b"" when none yet), or None at the end of the body."""
        if self._body:
            data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            self._buffered = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self.complete:
            return None
        if self.error is not None:
            raise self.error
        return b""

    def body_waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future that resolves when more body (or the end, or an error) arrives."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._body_waiter = waiter
        return waiter

    def reusable(self) -> bool:
        """Whether the connection can carry another request."""
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def abort(self) -> None:
        """Drop the connection (an unfinished response must never be read by the next request)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter, self._body_waiter = self._body_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamIOError) -> None:
        self.error = error
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._wake()


class UpstreamResponse:
    """An engine's answer: status and headers now, the body by `read()` or `async for` over its pieces."""

    __slots__ = ("_conn", "_idle_timeout", "_loop", "_pool", "_released", "headers", "status")

    def __init__(self, pool: UpstreamPool, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._conn = conn
        self._loop = loop
        self._idle_timeout = pool.idle_timeout
        self._released = False
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        """The whole body."""
        parts = [piece async for piece in self]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def received(self) -> bytes:
        """Body bytes that already arrived and were not read yet, without waiting (b"" if none, or on an error):
        what the engine had sent when its request was cut, for metering."""
        try:
            return self._conn.take() or b""
        except UpstreamIOError:
            return b""

    def __aiter__(self) -> UpstreamResponse:
        """Iterate over body pieces as they arrive."""
        return self

    async def __anext__(self) -> bytes:
        """The next piece of body; TimeoutError when the engine is silent for longer than the idle timeout."""
        conn = self._conn
        while True:
            data = conn.take()
            if data is None:
                raise StopAsyncIteration
            if data:
                return data
            waiter = conn.body_waiter(self._loop)
            timer = self._loop.call_later(self._idle_timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    def close(self) -> None:
        """Give the connection back to the pool if the answer was read whole, else drop it (stops the engine)."""
        if self._released:
            return
        self._released = True
        self._pool.release(self._conn)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamPool:
    """Keep-alive connections per engine origin; `post()` sends one request and returns once headers are in."""

    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float,
        keepalive_timeout: float = 4.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        api_key_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        # llama-server closes idle keep-alive connections; ours are dropped sooner, so fewer go stale.
        self.keepalive_timeout = keepalive_timeout
        self._ssl = ssl_context
        self._api_key_for = api_key_for
        self._idle: dict[tuple[str, int, bool], deque[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._heads: dict[tuple[str, str], tuple[tuple[str, int, bool], bytes]] = {}
        self._closes_after_chunked: set[tuple[str, int, bool]] = set()
        self.opened = 0  # connections opened over the pool's life (pool reuse is measurable)

    async def post(self, base_url: str, path: str, body: bytes, first_byte_timeout: float) -> UpstreamResponse:
        """POST a JSON body and wait for the response headers; raises ConnectFailed, UpstreamIOError (retryable
        when `before_response`), or TimeoutError after `first_byte_timeout` seconds without an answer."""
        loop = asyncio.get_running_loop()
        cached = self._heads.get((base_url, path))
        if cached is None:
            origin = self.origin(base_url)
            cached = self._heads[(base_url, path)] = (
                origin.key,
                b"POST "
                + origin.prefix
                + path.encode()
                + b" HTTP/1.1\r\nhost: "
                + origin.host_header
                + b"\r\n"
                + origin.auth_header
                + b"content-type: application/json\r\naccept-encoding: identity\r\ncontent-length: ",
            )
        key, head = cached
        request = b"%b%d\r\n\r\n%b" % (head, len(body), body)
        conn = self._checkout(key)
        if conn is not None:
            try:
                return await self._exchange(loop, conn, request, first_byte_timeout)
            except UpstreamIOError as exc:
                if not exc.before_response:
                    raise
                # A kept-alive connection the engine had already closed (its FIN was still in flight when we
                # wrote): the engine never read the request, so send it again on a new connection to the same
                # engine, instead of letting the router move it elsewhere and lose its cache locality.
                self._learn_close(conn)
        conn = await self._connect(loop, key)
        return await self._exchange(loop, conn, request, first_byte_timeout)

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, request: bytes, first_byte_timeout: float
    ) -> UpstreamResponse:
        waiter = conn.begin(loop)
        assert conn.transport is not None
        conn.transport.write(request)
        # A timer on the future, not asyncio.timeout(): no task cancellation machinery per request.
        timer = loop.call_later(first_byte_timeout, _expire, waiter)
        try:
            await waiter
        except BaseException:
            conn.abort()  # timed out, cancelled (client gone) or broken: this exchange is over
            raise
        finally:
            timer.cancel()
        return UpstreamResponse(self, conn, loop)

    def release(self, conn: _Connection) -> None:
        """Back into the idle pool if it can carry another request, otherwise closed."""
        if not conn.reusable() or (conn.chunked and conn.key in self._closes_after_chunked):
            conn.abort()
            return
        now = conn.idle_since = time.monotonic()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        # Oldest first: drop the ones the engine closed or that expired, so a past burst's connections do not
        # linger behind the few that steady traffic keeps reusing.
        oldest_ok = now - self.keepalive_timeout
        while idle and (idle[0].closed or idle[0].idle_since < oldest_ok):
            idle.popleft().abort()
        idle.append(conn)

    def _learn_close(self, conn: _Connection) -> None:
        """An engine that closes a connection right after a chunked answer (llama-server ends every stream that
        way, without `Connection: close`) gets no more such connections pooled: each would cost a failed write."""
        conn.abort()
        if conn.chunked and (conn.closed_at or time.monotonic()) - conn.idle_since < _CLOSE_AFTER_STREAM_WINDOW:
            self._closes_after_chunked.add(conn.key)

    def close(self) -> None:
        """Close every idle connection (connections in use close with their responses)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()

    def idle_connections(self) -> int:
        """How many idle connections the pool holds (tests and diagnostics)."""
        return sum(len(c) for c in self._idle.values())

    def origin(self, base_url: str) -> Origin:
        """Parse a base URL once: ValueError unless it is http(s)://host[:port][/prefix]."""
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = self._parse(base_url)
        return origin

    def _parse(self, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/path prefix], got {base_url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        default = port == (443 if tls else 80)
        key = self._api_key_for(base_url) if self._api_key_for is not None else None
        return Origin(
            key=(host, port, tls),
            prefix=parts.path.rstrip("/").encode(),
            host_header=(shown if default else f"{shown}:{port}").encode(),
            auth_header=b"authorization: Bearer " + key.encode("latin-1") + b"\r\n" if key else b"",
        )

    def _checkout(self, key: tuple[str, int, bool]) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        oldest_ok = time.monotonic() - self.keepalive_timeout
        while conns:
            conn = conns.pop()  # most recently used first: the likeliest to be still open
            if not conn.closed and conn.idle_since >= oldest_ok:
                return conn
            if conn.closed:
                self._learn_close(conn)  # aborts it too
            else:
                conn.abort()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int, bool]) -> _Connection:
        host, port, tls = key
        tls_context: ssl.SSLContext | None = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls_context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=tls_context, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out", before_response=True) from None
        except OSError as exc:  # ssl.SSLError (a certificate the context does not trust, ...) is one too
            reason = str(exc) if isinstance(exc, ssl.SSLError) else exc.strerror or str(exc)
            raise ConnectFailed(f"connect to {host}:{port} failed: {reason}", before_response=True) from None
        self.opened += 1
        conn.key = key
        return conn
