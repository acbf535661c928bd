"""The hot path's upstream client against a scripted HTTP server on 127.0.0.1: pooling, framing, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

from fleetgate.fleet.upstream import ConnectFailed, UpstreamIOError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """A server whose connection handler the test writes; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read requests one after another and let the handler answer each."""
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                await self.handler(reader, writer, len(self.requests))
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[Scripted, str]]:
    """Run a scripted server on a free port; yields it and its base URL."""
    s = Scripted(handler)
    server = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield s, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _whole(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%b\r\n%b" % (
        len(body),
        extra,
        body,
    )


async def _fetch(pool: UpstreamPool, url: str) -> bytes:
    """One whole exchange: POST, read the body, give the connection back."""
    resp = await pool.post(url, "/x", b"{}", 5)
    body = await resp.read()
    resp.close()
    return body


async def _answer_whole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(_whole(b'{"n":%d}' % n))
    await writer.drain()


async def test_whole_answers_reuse_one_connection() -> None:
    async with scripted(_answer_whole) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        for n in (1, 2, 3):
            resp = await pool.post(url, "/v1/chat/completions", b'{"a":1}', 5)
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert await resp.read() == b'{"n":%d}' % n
            resp.close()
        assert pool.opened == 1 and server.connections == 1
        assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert server.requests[0].endswith(b"content-length: 7\r\n\r\n" + b'{"a":1}', 5)
        pool.close()


async def test_connection_close_answer_is_not_reused() -> None:
    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(_whole(b"{}", b"connection: close\r\n"))
        await writer.drain()
        writer.close()

    async with scripted(close_after) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        for _ in range(2):
            assert await _fetch(pool, url) == b"{}"
        assert pool.opened == 2 and server.connections == 2


async def test_idle_connection_closed_by_engine_is_not_used_again() -> None:
    async with scripted(_answer_whole) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        await _fetch(pool, url)
        assert pool.idle_connections() == 1
        # llama-server closes idle keep-alive connections: simulate it from our side of the socket.
        conn = pool._idle[("127.0.0.1", int(url.rsplit(":", 1)[1]), False)][0]
        assert conn.transport is not None
        conn.transport.close()
        await asyncio.sleep(0.05)
        assert await _fetch(pool, url) == b'{"n":2}'
        assert pool.opened == 2


async def test_expired_idle_connection_is_dropped() -> None:
    async with scripted(_answer_whole) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2, keepalive_timeout=0.05)
        await _fetch(pool, url)
        await asyncio.sleep(0.1)
        await _fetch(pool, url)
        assert pool.opened == 2


async def test_kept_alive_connection_the_engine_dropped_is_resent_on_a_new_one() -> None:
    per_connection: dict[int, int] = {}

    async def second_request_hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        key = id(writer)
        per_connection[key] = per_connection.get(key, 0) + 1
        if per_connection[key] == 2:
            writer.close()  # the engine had given up on the idle connection: this request was never read
            return
        writer.write(_whole(b'{"n":%d}' % n))
        await writer.drain()

    async with scripted(second_request_hangs_up) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        for _ in range(2):
            resp = await pool.post(url, "/x", b"{}", 5)
            assert resp.status == 200
            await resp.read()
            resp.close()
        assert pool.opened == 2 and server.connections == 2


async def test_engine_that_closes_after_every_stream_gets_no_pooled_stream_connections() -> None:
    async def stream_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        # llama-server ends each stream with the terminating chunk, then closes, without `Connection: close`.
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with scripted(stream_then_close) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        for i in range(6):
            assert await _fetch(pool, url) == b"hello"
            if i == 2:
                await asyncio.sleep(0.05)  # let the engine's close arrive while the connection is idle
        assert pool.opened == 6 and server.connections == 6
        assert pool.idle_connections() == 0  # learnt: such connections are no longer pooled at all


async def test_a_burst_leaves_no_dead_connections_behind() -> None:
    async with scripted(_answer_whole) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2, keepalive_timeout=0.2)

        await asyncio.gather(*(_fetch(pool, url) for _ in range(20)))
        assert pool.idle_connections() == 20
        await asyncio.sleep(0.12)
        await _fetch(pool, url)  # steady traffic keeps reusing the most recent connection...
        await asyncio.sleep(0.12)  # ...while the burst's other 19 expire below it
        await _fetch(pool, url)
        assert pool.idle_connections() == 1


async def test_stream_pieces_arrive_as_sent() -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%b\r\n" % (len(b"data: 1\n\n"), b"data: 1\n\n"))
        await writer.drain()
        await release.wait()
        writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(b"data: 2\n\n"), b"data: 2\n\n"))
        await writer.drain()

    async with scripted(chunked) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        resp = await pool.post(url, "/x", b"{}", 5)
        pieces = aiter(resp)
        # The first event is readable while the engine still holds back the second: nothing is buffered.
        assert await asyncio.wait_for(anext(pieces), 2) == b"data: 1\n\n"
        release.set()
        assert [p async for p in pieces] == [b"data: 2\n\n"]
        resp.close()
        assert pool.idle_connections() == 1  # a chunked answer read to its end leaves a reusable connection


async def test_engine_breaking_off_mid_body_raises_after_response() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    async with scripted(broken) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        resp = await pool.post(url, "/x", b"{}", 5)
        with pytest.raises(UpstreamIOError) as info:
            await resp.read()
        assert info.value.before_response is False
        resp.close()
        assert pool.idle_connections() == 0


async def test_engine_closing_before_answering_is_retryable() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.close()

    async with scripted(hang_up) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        with pytest.raises(UpstreamIOError) as info:
            await pool.post(url, "/x", b"{}", 5)
        assert info.value.before_response is True
        assert not isinstance(info.value, ConnectFailed)


async def test_nobody_listening_is_connect_failed() -> None:
    async with scripted(_answer_whole) as (_server, url):
        pass  # the port is free again once the server is gone
    pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
    with pytest.raises(ConnectFailed, match=r"connect to 127\.0\.0\.1:"):
        await pool.post(url, "/x", b"{}", 5)


async def test_silent_engine_times_out_between_pieces() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with scripted(stall) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=0.2)
        resp = await pool.post(url, "/x", b"{}", 5)
        pieces = aiter(resp)
        assert await anext(pieces) == b"hello"
        with pytest.raises(TimeoutError):
            await anext(pieces)
        resp.close()
        assert pool.idle_connections() == 0


async def test_closing_an_unread_stream_drops_the_connection() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(200):
            writer.write(b"5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with scripted(endless) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        resp = await pool.post(url, "/x", b"{}", 5)
        assert await anext(aiter(resp))
        resp.close()  # the client went away: the engine must see the connection go (it stops generating)
        await asyncio.wait_for(server.closed_by_client.wait(), 3)
        assert pool.idle_connections() == 0


async def test_large_body_arrives_whole_through_flow_control() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, past the high-water mark

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(_whole(body))
        await writer.drain()

    async with scripted(big) as (_server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        resp = await pool.post(url, "/x", b"{}", 5)
        received = bytearray()
        async for piece in resp:
            received += piece
            await asyncio.sleep(0)  # a slow reader
        assert bytes(received) == body
        resp.close()
        assert pool.idle_connections() == 1


async def test_first_byte_timeout_drops_the_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if not await reader.read(1):  # never answers; EOF means the client hung up
            server.closed_by_client.set()

    async with scripted(slow) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        with pytest.raises(TimeoutError):
            await pool.post(url, "/x", b"{}", 0.1)
        await asyncio.wait_for(server.closed_by_client.wait(), 3)
        assert pool.idle_connections() == 0


async def test_cancelled_wait_drops_the_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if not await reader.read(1):
            server.closed_by_client.set()

    async with scripted(slow) as (server, url):
        pool = UpstreamPool(connect_timeout=2, idle_timeout=2)
        task = asyncio.create_task(pool.post(url, "/x", b"{}", 5))
        await asyncio.sleep(0.1)
        task.cancel()  # the client hung up while the engine had not answered yet
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed_by_client.wait(), 3)
        assert pool.idle_connections() == 0


def test_pool_works_on_uvloop() -> None:
    """The gateway runs on uvloop, whose transports differ from asyncio's: one full exchange there."""

    async def exchange() -> None:
        await test_whole_answers_reuse_one_connection()
        await test_stream_pieces_arrive_as_sent()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(exchange())


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "http://user@127.0.0.1:1", "http://127.0.0.1:1/?a=b", "http://"])
def test_only_http_and_https_base_urls(url: str) -> None:
    pool = UpstreamPool(connect_timeout=1, idle_timeout=1)
    with pytest.raises(ValueError, match=r"http\(s\)://host\[:port\]\[/path prefix\]"):
        asyncio.run(pool.post(url, "/x", b"{}", 5))
