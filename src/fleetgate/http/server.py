"""The gateway's HTTP/1.1 server protocol: uvicorn's, with a lean request cycle for the two completion paths.

uvicorn keeps everything a server must get right (keep-alive, pipelining, flow control, `Expect: 100-continue`,
graceful shutdown, lifespan), and every other path still runs through the full ASGI app. What a completion POST
skips is the generic ASGI cost around our own hot path, measured as the largest block of gateway CPU left that
was not our code:
- header validation by regex on every response header: every header here comes from our code or from an engine
  response that the upstream parser already framed;
- the response head and the first body bytes in two writes (two syscalls): the head waits for the first bytes;
- a task per request that watches `receive()` for a disconnect: the cycle calls the handler back instead.

Slow and malformed clients meet the read deadlines and head limits of http/read_limits.py on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import FleetError
from fleetgate.http.read_limits import ReadLimitsProtocol, ServerConfig

log = logging.getLogger(__name__)

# The ASGI extension a lane's scope carries: call it with a callback to hear, once, that the client went away
# before the response was complete (and with None to stop listening).
ON_DISCONNECT = "fleetgate.on_disconnect"
LaneApp = Callable[..., Any]  # an ASGI callable serving one lane (api.lanes.CompletionEndpoint)


class LaneCycle(RequestResponseCycle):
    """One completion request: uvicorn's receive (body, 100-continue, flow control) and a lean send."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytes | None = None  # the response head, held until the first body bytes
        self._on_disconnect: Callable[[], None] | None = None
        extensions: Any = {ON_DISCONNECT: self._listen}  # ASGI types extension values as dicts; ours is a call
        self.scope["extensions"] = extensions

    def _listen(self, callback: Callable[[], None] | None) -> None:
        self._on_disconnect = callback
        if self.disconnected:  # gone already (while its body was read, say): the handler hears it at once
            self.client_gone()

    def client_gone(self) -> None:
        """The connection was lost before the response was complete: tell the handler, once."""
        callback, self._on_disconnect = self._on_disconnect, None
        if callback is not None:
            callback()

    async def run_asgi(self, app: LaneApp) -> None:
        """Run the lane's handler; it answers its own errors, so only a broken contract is left to catch."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException:
            log.exception("unexpected error in a completion lane")
            self.transport.close()
        else:
            if not self.response_complete and not self.disconnected:
                log.error("a completion lane returned without completing its response")
                self.transport.close()
        finally:
            self._on_disconnect = None
            self.on_response = lambda: None

    async def send(self, message: Any) -> None:
        """Send one ASGI response message; the head goes out with the first body bytes, in one write."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {message['type']!r}")
            self.response_started = True
            self.waiting_for_100_continue = False
            parts = [STATUS_LINE[message["status"]]]
            chunked = True
            for name, value in (*self.default_headers, *message.get("headers", ())):
                if name == b"content-length":
                    chunked = False
                parts += (name, b": ", value, b"\r\n")
            if not self.keep_alive:
                parts.append(b"connection: close\r\n")
            if chunked:
                parts.append(b"transfer-encoding: chunked\r\n")
            parts.append(b"\r\n")
            self.chunked_encoding = chunked
            self._head = b"".join(parts)
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected {message['type']!r} after the response was complete")
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self.chunked_encoding:
            out = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                out += b"0\r\n\r\n"
        else:
            out = body
        if self._head is not None:
            out, self._head = self._head + out, None
        if out:
            self.transport.write(out)
        if not more:
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


class GatewayProtocol(ReadLimitsProtocol):
    """uvicorn's httptools protocol, within read limits; POSTs to a lane (api.lanes.FastLane) run on a LaneCycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # If uvicorn wrapped the app (trace logging, say), there are no lanes and every request takes the ASGI way.
        self.lanes: dict[bytes, LaneApp] = getattr(self.app, "raw_lanes", {})

    def on_headers_complete(self) -> None:
        """Start a lane's cycle for a completion POST; anything else is uvicorn's (both within the read limits)."""
        parser = self.parser
        raw_path, _, query = self.url.partition(b"?")
        lane = self.lanes.get(raw_path) if parser.get_method() == b"POST" else None
        if lane is None or parser.should_upgrade():
            super().on_headers_complete()
            return
        self.head_complete()
        http_version = parser.get_http_version()
        scope = self.scope
        scope["method"] = "POST"
        scope["http_version"] = http_version
        scope["path"] = raw_path.decode("ascii")
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        existing = self.cycle
        self.cycle = LaneCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, lane)
        else:  # pipelined behind a request still being answered: uvicorn starts it when that one completes
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, lane))

    def notify_client_gone(self, cycle: RequestResponseCycle) -> None:
        """A lane's handler hears that its client is gone (a body that stopped arriving, say)."""
        if isinstance(cycle, LaneCycle):
            cycle.client_gone()

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's bookkeeping, then a lane's handler hears that its client is gone."""
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, LaneCycle) and cycle.disconnected:
            cycle.client_gone()


def uvicorn_config(
    app: Any, *, shutdown_grace: float, log_level: str = "warning", limits: GatewayConfig | None = None
) -> uvicorn.Config:
    """The gateway's uvicorn settings: our protocol, inside the caller's loop, no access log or extra headers;
    `limits` is the gateway section whose read timeouts and head limits the protocol applies (default: defaults)."""
    return ServerConfig(
        app,
        limits=limits,
        loop="none",  # we already run inside the loop the CLI chose (uvloop when available)
        http=GatewayProtocol,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=int(shutdown_grace),
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server without its own signal capture: the stack decides what a signal stops, and in what order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the gateway's listening socket up front, so a busy port fails before any replica starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FleetError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another with --port or gateway.port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
