"""The gateway's HTTP/1.1 protocol (api/server.py) on raw sockets: keep-alive, pipelining, 100-continue,
HTTP/1.0, lanes and ASGI paths on one connection, a client leaving mid-stream, and slow or malformed clients
(api/read_limits.py) on a lane and on the ASGI path alike."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httptools
import pytest

from fleetgate.config import GatewayConfig
from fleetgate.http.server import ON_DISCONNECT, GatewayProtocol, LaneCycle, uvicorn_config
from tests import gateway_harness
from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.keys import DEMO_KEY

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

    async def all_until_closed(self) -> list[dict[str, Any]]:
        """Read until the gateway closes the connection (bounded: 10 s); every response it sent."""
        async with asyncio.timeout(10):
            while data := await self.reader.read(65536):
                self._parser.feed_data(data)
        return self.done

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


# Slow and malformed clients (api/read_limits.py). The limits are short so that each test meets them quickly; every
# wait is a bounded read until the gateway answers or closes, and the old server failed each of them by holding the
# connection open (or answering in plain text).
LIMITS: dict[str, Any] = {"header_timeout": 0.5, "body_timeout": 1.0, "keepalive_timeout": 0.5}
LANE, OTHER = "lane", "asgi"  # a completion POST on its lane, or a path served by the full ASGI app
VERSIONS = pytest.mark.parametrize("version", ["1.1", "1.0"])
PATHS = pytest.mark.parametrize("path", [LANE, OTHER])


@pytest.fixture
async def limited(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningGateway]:
    """A gateway in front of `engine` with short read timeouts."""
    limits = GatewayConfig.model_validate(LIMITS)
    # The harness builds its uvicorn settings without the gateway section: give them ours.
    monkeypatch.setattr(gateway_harness, "uvicorn_config", functools.partial(uvicorn_config, limits=limits))
    async with running_gateway([engine.url], **LIMITS) as running:
        yield running


def _head(gw: RunningGateway, path: str, version: str = "1.1", extra: str = "") -> str:
    """A request head without its blank line: a completion POST (lane), or a PUT to the admin API (ASGI path)."""
    if path == LANE:
        line, key = "POST /v1/chat/completions", DEMO_KEY
    else:
        line, key = "PUT /admin/tenants/slow-client", gw.admin_headers["Authorization"].removeprefix("Bearer ")
    return f"{line} HTTP/{version}\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n{extra}"


async def _refused(gw: RunningGateway, data: bytes, *, shut: bool = False) -> list[dict[str, Any]]:
    """Send `data` (then shut the sending side, if asked) and read every answer until the gateway closes."""
    reader, writer = await _connect(gw)
    try:
        writer.write(data)
        if shut:
            writer.write_eof()
        return await Responses(reader).all_until_closed()
    finally:
        writer.close()


def _assert_openai_error(response: dict[str, Any], status: int, code: str) -> str:
    """An OpenAI-shaped error with this status and code, on a connection the gateway closes; its message."""
    assert response["status"] == status
    assert response["headers"]["content-type"] == "application/json"
    assert response["headers"]["connection"] == "close"
    error = json.loads(response["body"])["error"]
    assert error == {"message": error["message"], "type": "invalid_request_error", "param": None, "code": code}
    return str(error["message"])


@PATHS
@VERSIONS
async def test_partial_headers_get_408_and_the_connection_closes(
    limited: RunningGateway, path: str, version: str
) -> None:
    (answer,) = await _refused(limited, _head(limited, path, version, "content-type: applic").encode())
    assert "0.5 s" in _assert_openai_error(answer, 408, "request_timeout")


@PATHS
@VERSIONS
async def test_a_body_shorter_than_its_content_length_gets_408(
    limited: RunningGateway, path: str, version: str
) -> None:
    body = json.dumps({"model": "smollm2", "messages": HI}).encode()
    head = _head(limited, path, version, f"content-type: application/json\r\ncontent-length: {len(body) + 10}\r\n")
    (answer,) = await _refused(limited, head.encode() + b"\r\n" + body)
    assert "Content-Length" in _assert_openai_error(answer, 408, "request_timeout")


async def test_a_lane_whose_body_stops_hears_its_client_gone_and_bills_nothing(
    limited: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = asyncio.Event()
    original = LaneCycle.client_gone

    def spy(cycle: LaneCycle) -> None:
        original(cycle)
        gone.set()

    monkeypatch.setattr(LaneCycle, "client_gone", spy)
    request = _post({"model": "smollm2", "messages": HI})
    (answer,) = await _refused(limited, request[:-5])  # the handler waits for the last 5 bytes of the body
    _assert_openai_error(answer, 408, "request_timeout")
    async with asyncio.timeout(10):
        await gone.wait()
    async with _connection(limited) as (writer, responses):  # a whole request after it: its row ends the wait
        writer.write(request)
        (ok,) = await responses.next()
        assert ok["status"] == 200
    async with asyncio.timeout(10):
        while not (rows := (await limited.gateway.ledger.events()).events):
            await asyncio.sleep(0.05)
    assert [(row.event_id, row.status) for row in rows] == [(ok["headers"]["x-request-id"], "ok")]


@PATHS
@pytest.mark.parametrize("cut", ["stall", "bad_framing", "shut"])
async def test_a_cut_chunked_body_is_refused(limited: RunningGateway, path: str, cut: str) -> None:
    head = _head(limited, path, extra="content-type: application/json\r\ntransfer-encoding: chunked\r\n")
    chunk = b"10\r\n" + b'{"model":"smollm'  # one whole chunk of 16 bytes, then no last chunk
    tail = b"\r\nzz\r\n" if cut == "bad_framing" else b""
    (answer,) = await _refused(limited, head.encode() + b"\r\n" + chunk + tail, shut=cut == "shut")
    if cut == "stall":
        _assert_openai_error(answer, 408, "request_timeout")
    else:
        _assert_openai_error(answer, 400, "invalid_request")


@PATHS
async def test_an_idle_keep_alive_connection_is_closed_without_an_answer(limited: RunningGateway, path: str) -> None:
    request = _post({"model": "smollm2", "messages": HI}) if path == LANE else b"GET /v1/models HTTP/1.1\r\n"
    if path == OTHER:
        request += f"host: 127.0.0.1\r\nauthorization: Bearer {DEMO_KEY}\r\n\r\n".encode()
    answers = await _refused(limited, request)
    assert [answer["status"] for answer in answers] == [200]  # answered, kept alive, then closed: nothing more
    assert "connection" not in answers[0]["headers"]
    assert await _refused(limited, b"") == []  # a connection that never sends a request is closed too


@PATHS
@VERSIONS
@pytest.mark.parametrize("oversized", ["200 headers", "64 KiB header"])
async def test_an_oversized_head_gets_431(limited: RunningGateway, path: str, version: str, oversized: str) -> None:
    if oversized == "200 headers":
        extra = "".join(f"x-header-{i}: {i}\r\n" for i in range(200))
    else:
        extra = f"x-large: {'a' * 65536}\r\n"
    (answer,) = await _refused(limited, _head(limited, path, version, extra + "content-length: 2\r\n\r\n{}").encode())
    message = _assert_openai_error(answer, 431, "headers_too_large")
    assert ("100 header fields" if oversized == "200 headers" else "16384 bytes") in message


@PATHS
async def test_a_malformed_request_gets_a_json_400(limited: RunningGateway, path: str) -> None:
    (answer,) = await _refused(limited, _head(limited, path, extra="bad header: x\r\n\r\n").encode())
    assert "malformed HTTP request" in _assert_openai_error(answer, 400, "invalid_request")


@PATHS
async def test_a_refusal_waits_for_the_answer_in_flight(limited: RunningGateway, path: str) -> None:
    first = _post({"model": "smollm2", "messages": HI}) if path == LANE else b"GET /healthz HTTP/1.1\r\n\r\n"
    answers = await _refused(limited, first + b"BAD\x01 request\r\n\r\n")  # pipelined behind a good request
    assert [answer["status"] for answer in answers] == [200, 400]
    _assert_openai_error(answers[1], 400, "invalid_request")


async def test_the_read_limits_do_not_cut_a_slow_answer_or_a_steady_body(
    limited: RunningGateway, engine: FakeEngine
) -> None:
    engine.mode, engine.chunks = "slow", 8  # 0.2 s between chunks: longer than every read timeout
    body = json.dumps({"model": "smollm2", "messages": HI, "stream": True}).encode()
    head = _head(limited, LANE, extra=f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    async with _connection(limited) as (writer, responses):
        writer.write(head.encode())
        for start in range(0, len(body), 16):  # the body in pieces, 0.2 s apart: longer than body_timeout in all
            await asyncio.sleep(0.2)
            writer.write(body[start : start + 16])
        (streamed,) = await responses.next()
    assert streamed["status"] == 200 and streamed["body"].rstrip().endswith(b"data: [DONE]")
