"""The gateway's HTTP/1.1 protocol (api/server.py) on raw sockets: keep-alive, pipelining, 100-continue,
HTTP/1.0, lanes and ASGI paths on one connection, and a client leaving mid-stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httptools
import pytest

from fleetgate.api.server import ON_DISCONNECT, GatewayProtocol, LaneCycle
from tests.fakes import FakeEngine
from tests.gateway_harness import DEMO_KEY, RunningGateway, running_gateway

HI = [{"role": "user", "content": "hi"}]


class Responses:
    """Reads HTTP/1.1 responses off one connection with httptools, in order."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.done: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self._parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._current = {"headers": {}, "body": b""}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current["headers"][name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._current["status"] = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current["body"] += body

    def on_message_complete(self) -> None:
        self.done.append(self._current)

    async def next(self, count: int = 1) -> list[dict[str, Any]]:
        """Read until `count` more responses are complete (bounded: 10 s)."""
        want = len(self.done) + count
        async with asyncio.timeout(10):
            while len(self.done) < want:
                data = await self.reader.read(65536)
                assert data, "the gateway closed the connection before answering"
                self._parser.feed_data(data)
        return self.done[want - count : want]


def _post(body: dict[str, Any], *, version: str = "1.1", extra: str = "", path: str = "/v1/chat/completions") -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/{version}\r\nhost: 127.0.0.1\r\nauthorization: Bearer {DEMO_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n{extra}\r\n"
    )
    return head.encode() + raw


async def _connect(gw: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gw.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


@asynccontextmanager
async def _connection(gw: RunningGateway) -> AsyncIterator[tuple[asyncio.StreamWriter, Responses]]:
    """One raw connection to the gateway: write requests, read responses in order; closed afterwards."""
    reader, writer = await _connect(gw)
    try:
        yield writer, Responses(reader)
    finally:
        writer.close()


def test_the_gateway_serves_with_our_protocol(gw: RunningGateway) -> None:
    assert gw.server.config.http_protocol_class is GatewayProtocol
    assert set(gw.server.config.loaded_app.raw_lanes) == {b"/v1/chat/completions", b"/v1/completions"}


async def test_keep_alive_serves_several_lane_requests_on_one_connection(gw: RunningGateway) -> None:
    async with _connection(gw) as (writer, responses):
        ids = set()
        for _ in range(3):
            writer.write(_post({"model": "smollm2", "messages": HI}))
            (resp,) = await responses.next()
            assert resp["status"] == 200
            assert resp["headers"]["content-length"] == str(len(resp["body"]))
            assert "connection" not in resp["headers"]  # kept alive
            assert json.loads(resp["body"])["choices"][0]["message"]["content"] == "hello"
            ids.add(resp["headers"]["x-request-id"])
        assert len(ids) == 3


async def test_pipelined_requests_are_answered_in_order(gw: RunningGateway) -> None:
    async with _connection(gw) as (writer, responses):
        # Three requests in one write: whole, streamed, then a non-lane path, each must come back in that order.
        writer.write(
            _post({"model": "smollm2", "messages": HI})
            + _post({"model": "smollm2", "messages": HI, "stream": True})
            + b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        )
        whole, stream, health = await responses.next(3)
        assert whole["status"] == 200 and json.loads(whole["body"])["object"] == "chat.completion"
        assert stream["status"] == 200 and stream["headers"]["transfer-encoding"] == "chunked"
        assert stream["headers"]["content-type"].startswith("text/event-stream")
        assert stream["body"].rstrip().endswith(b"data: [DONE]")
        assert health["status"] == 200


async def test_expect_100_continue_gets_its_interim_answer(gw: RunningGateway) -> None:
    reader, writer = await _connect(gw)
    try:
        request = _post({"model": "smollm2", "messages": HI}, extra="expect: 100-continue\r\n")
        head, _, body = request.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")  # like curl: the body only once the server said to go on
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        (resp,) = await Responses(reader).next()
        assert resp["status"] == 200
    finally:
        writer.close()


async def test_http_1_0_gets_connection_close(gw: RunningGateway) -> None:
    reader, writer = await _connect(gw)
    try:
        writer.write(_post({"model": "smollm2", "messages": HI}, version="1.0"))
        async with asyncio.timeout(10):
            data = await reader.read()  # to EOF: the gateway must close after its answer
        head = data.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head
    finally:
        writer.close()


async def test_errors_on_the_lane_are_openai_shaped_and_keep_the_connection(gw: RunningGateway) -> None:
    async with _connection(gw) as (writer, responses):
        writer.write(_post({"model": "no-such-model", "messages": HI}, path="/v1/chat/completions?trace=1"))
        (missing,) = await responses.next()
        assert missing["status"] == 404
        assert "no-such-model" in json.loads(missing["body"])["error"]["message"]
        writer.write(_post({"model": "smollm2", "messages": HI}))
        (ok,) = await responses.next()
        assert ok["status"] == 200


async def test_a_client_leaving_mid_stream_stops_the_engine_and_is_metered(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.mode, engine.chunks = "slow", 30  # 0.2 s between chunks: the client leaves long before the end
    async with running_gateway([engine.url]) as gw:
        gone = asyncio.Event()
        original = LaneCycle.client_gone

        def spy(cycle: LaneCycle) -> None:
            original(cycle)
            gone.set()

        monkeypatch.setattr(LaneCycle, "client_gone", spy)  # the callback path, not a watcher task
        reader, writer = await _connect(gw)
        writer.write(_post({"model": "smollm2", "messages": HI, "stream": True}))
        async with asyncio.timeout(10):
            await reader.readuntil(b"data: ")  # the stream is under way
        writer.close()
        async with asyncio.timeout(10):
            await gone.wait()
        async with asyncio.timeout(10):
            while engine.cancelled == 0:  # the gateway dropped its upstream connection: the engine stops
                await asyncio.sleep(0.02)
            while not (rows := (await gw.gateway.ledger.events()).events):
                await asyncio.sleep(0.05)
        assert rows[0].status == "client_abort"
        # The engine never sent its usage: the row is counted by the gateway, and short of the full answer.
        assert rows[0].usage_source != "engine" and rows[0].completion_tokens < 30


def test_a_handler_listening_after_the_client_left_hears_it_at_once() -> None:
    cycle = LaneCycle(
        scope={"type": "http"},
        transport=None,
        flow=None,
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    heard: list[str] = []
    listen: Any = cycle.scope["extensions"][ON_DISCONNECT]  # ASGI types extensions as dicts; ours is a call
    listen(lambda: heard.append("first"))
    assert heard == []  # still connected: nothing yet
    cycle.disconnected = True
    cycle.client_gone()
    listen(lambda: heard.append("late"))  # a handler that registers after the fact is not left waiting
    cycle.client_gone()  # once per callback: it was already told
    assert heard == ["first", "late"]
