"""The floor: the least a metering proxy must do per request, in Python on uvloop, for bench/overhead.py.

Per request it parses the client's HTTP request (httptools) and JSON body (orjson), forces usage reporting on
streams, sends the body on a pooled keep-alive engine connection, parses the engine's answer (httptools), takes the
usage (and drops the usage-only SSE event the client did not ask for), appends a start and a finish line to an
outbox file, and answers. No auth, limits, routing, admission, metrics, ledger or ASGI: what it costs is what
any Python metering gateway pays on this machine before its features, so `fleetgate / floor` is the cost of
fleetgate's features. Not a product: one engine, one path, no error handling beyond closing the connection.

Run: `python bench/harness/floor_proxy.py --upstream-port N --port-file PATH --outbox PATH` (writes its port once
it listens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from collections import deque
from pathlib import Path
from typing import Any

import httptools
import orjson
import uvloop

_USAGE = b'"usage":{'


class _Engine(asyncio.Protocol):
    """One keep-alive connection to the engine; hands body pieces to the request that owns it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.on_piece: Any = None  # callable(bytes) of the request in flight
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.on_piece(body)

    def on_message_complete(self) -> None:
        done, self.done = self.done, None
        if done is not None and not done.done():
            done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("engine closed"))


class FloorProxy:
    """The shared state: the engine's address, its idle connections, the outbox file."""

    def __init__(self, upstream_port: int, outbox: Path) -> None:
        self.upstream_port = upstream_port
        self.idle: deque[_Engine] = deque()
        self.outbox = os.open(outbox, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self.head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"

    async def engine(self) -> _Engine:
        """An idle pooled connection, or a new one."""
        if self.idle:
            return self.idle.pop()
        _, conn = await asyncio.get_running_loop().create_connection(_Engine, "127.0.0.1", self.upstream_port)
        return conn


class _Client(asyncio.Protocol):
    """One client connection: requests in order, each answered by its own task."""

    def __init__(self, proxy: FloorProxy) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self.answer(body))

    async def answer(self, raw: bytes) -> None:
        proxy, client = self.proxy, self.transport
        assert client is not None
        rid = secrets.token_hex(8).encode()
        payload = orjson.loads(raw)
        stream = bool(payload.get("stream"))
        if stream:
            payload["stream_options"] = {"include_usage": True}
        body = orjson.dumps(payload)
        os.write(proxy.outbox, b'{"t":"s","id":"%b","model":%b}\n' % (rid, orjson.dumps(payload["model"])))
        conn = await proxy.engine()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.done = done
        usage: list[Any] = []
        if stream:
            client.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                b"x-request-id: %b\r\n\r\n" % rid
            )
            pending = [b""]

            def piece(data: bytes) -> None:
                events = (pending[0] + data).split(b"\n\n")
                pending[0] = events.pop()
                kept = []
                for event in events:
                    if _USAGE in event and b'"choices":[]' in event:
                        usage.append(orjson.loads(event[6:])["usage"])
                    else:
                        kept.append(event + b"\n\n")
                if kept:
                    out = b"".join(kept)
                    client.write(b"%x\r\n%b\r\n" % (len(out), out))

            conn.on_piece = piece
        else:
            parts: list[bytes] = []
            conn.on_piece = parts.append
        assert conn.transport is not None
        conn.transport.write(b"%bcontent-length: %d\r\n\r\n%b" % (proxy.head, len(body), body))
        try:
            await done
        except ConnectionError:
            client.close()
            return
        proxy.idle.append(conn)
        if not stream:
            data = b"".join(parts)
            usage.append(orjson.loads(data).get("usage"))
        os.write(proxy.outbox, b'{"t":"f","id":"%b","usage":%b}\n' % (rid, orjson.dumps(usage[0] if usage else None)))
        if stream:
            client.write(b"0\r\n\r\n")
        else:
            client.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-request-id: %b\r\n\r\n%b"
                % (len(data), rid, data)
            )


async def serve(upstream_port: int, port_file: Path, outbox: Path) -> None:
    """Listen on a free 127.0.0.1 port, write it to `port_file`, serve until killed."""
    proxy = FloorProxy(upstream_port, outbox)
    server = await asyncio.get_running_loop().create_server(lambda: _Client(proxy), "127.0.0.1", 0, backlog=2048)
    port = server.sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    await asyncio.Event().wait()


def main() -> None:
    """Parse arguments and serve."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--outbox", type=Path, required=True)
    a = p.parse_args()
    uvloop.run(serve(a.upstream_port, a.port_file, a.outbox))


if __name__ == "__main__":
    main()
