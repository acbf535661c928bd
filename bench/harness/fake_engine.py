"""A fake OpenAI-compatible engine that costs next to nothing, so a benchmark measures the proxy, not the engine.

Raw asyncio Protocol on uvloop with httptools parsing; every answer is precomputed bytes. Run it as a script:
`python bench/harness/fake_engine.py --port 0 --port-file PATH` (it writes its port to PATH once it listens).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any, cast

import httptools
import orjson

MODEL = "fake"
CONTENT_CHUNKS = 16
PROMPT_TOKENS = 8
CREATED = 1_700_000_000
# What a client that did not ask for usage must see: the content chunks plus the finish chunk.
EXPECTED_EVENTS = CONTENT_CHUNKS + 1
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": CONTENT_CHUNKS,
    "total_tokens": PROMPT_TOKENS + CONTENT_CHUNKS,
}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": choices,
        **extra,
    }


def stream_events(include_usage: bool) -> list[bytes]:
    """The SSE events of one streamed answer, in order, `[DONE]` last."""
    events = []
    for i in range(CONTENT_CHUNKS):
        delta: dict[str, Any] = {"content": f"tok{i} "}
        if i == 0:
            delta["role"] = "assistant"
        events.append(_sse(_chunk([{"index": 0, "delta": delta, "finish_reason": None}])))
    events.append(_sse(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])))
    if include_usage:
        events.append(_sse(_chunk([], usage=USAGE)))
    events.append(b"data: [DONE]\n\n")
    return events


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunked-encoding frame."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _head(status: str, content_type: bytes, length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %b\r\ncontent-type: %b\r\n%b\r\n\r\n" % (status.encode(), content_type, framing)


def _json_response(obj: Any, status: str = "200 OK") -> bytes:
    body = orjson.dumps(obj)
    return _head(status, b"application/json", len(body)) + body


COMPLETION = _json_response(
    {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(f"tok{i} " for i in range(CONTENT_CHUNKS))},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
)
MODELS = _json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED}]})
HEALTH = _json_response({"status": "ok"})
NOT_FOUND = _json_response({"error": {"message": "not found", "type": "invalid_request_error"}}, "404 Not Found")
BAD_REQUEST = _json_response({"error": {"message": "bad request", "type": "invalid_request_error"}}, "400 Bad Request")
STREAM_HEAD = _head("200 OK", b"text/event-stream", None)
# Precomputed wire frames: [head + first event, ..., last event + terminating zero-length chunk].
STREAM_FRAMES = {usage: [_frame(e) for e in stream_events(usage)] for usage in (False, True)}
for _frames in STREAM_FRAMES.values():
    _frames[0] = STREAM_HEAD + _frames[0]
    _frames[-1] += b"0\r\n\r\n"


class Stats:
    """Counters the benchmark reads from `GET /stats` (e.g. whether a proxy reuses its upstream connections)."""

    connections = 0
    requests = 0
    streams = 0


class EngineProtocol(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered strictly in order."""

    def __init__(self, burst: bool) -> None:
        self._burst = burst
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._pending: list[tuple[bytes, bytes, bytes, bool]] = []
        self._streaming = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection."""
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)
        Stats.connections += 1

    def data_received(self, data: bytes) -> None:
        """Feed the parser; it calls back on_url/on_body/on_message_complete."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(BAD_REQUEST, keep_alive=False)

    def on_message_begin(self) -> None:
        """Start a fresh request."""
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        """Collect the URL (it may arrive in pieces)."""
        self._url += url

    def on_body(self, body: bytes) -> None:
        """Collect the body (it may arrive in pieces)."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Answer now, or after the stream in progress (HTTP/1.1 answers must not interleave)."""
        request = (self._parser.get_method(), self._url, b"".join(self._body), self._parser.should_keep_alive())
        if self._streaming:
            self._pending.append(request)
            return
        self._dispatch(*request)

    def _dispatch(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        Stats.requests += 1
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._write(BAD_REQUEST, keep_alive)
                return
            if payload.get("stream"):
                options = payload.get("stream_options") or {}
                self._stream(STREAM_FRAMES[bool(options.get("include_usage"))], keep_alive)
            else:
                self._write(COMPLETION, keep_alive)
        elif method == b"GET" and path == b"/v1/models":
            self._write(MODELS, keep_alive)
        elif method == b"GET" and path == b"/health":
            self._write(HEALTH, keep_alive)
        elif method == b"GET" and path == b"/stats":
            self._write(
                _json_response(
                    {"connections": Stats.connections, "requests": Stats.requests, "streams": Stats.streams}
                ),
                keep_alive,
            )
        else:
            self._write(NOT_FOUND, keep_alive)

    def _write(self, data: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not keep_alive:
            transport.close()

    def _stream(self, frames: list[bytes], keep_alive: bool) -> None:
        Stats.streams += 1
        if self._burst:
            self._write(b"".join(frames), keep_alive)
            return
        # One write per event, one event per loop turn: the proxy sees separate reads as it would from a real
        # engine emitting tokens, yet no wall-clock delay is added.
        self._streaming = True
        self._write(frames[0], True)
        self._loop.call_soon(self._next_frame, frames, 1, keep_alive)

    def _next_frame(self, frames: list[bytes], index: int, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._streaming = False
            return
        last = index == len(frames) - 1
        self._write(frames[index], keep_alive or not last)
        if not last:
            self._loop.call_soon(self._next_frame, frames, index + 1, keep_alive)
            return
        self._streaming = False
        while self._pending and not self._streaming:
            self._dispatch(*self._pending.pop(0))

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the transport so pending stream frames stop."""
        self._transport = None


async def serve(host: str, port: int, port_file: Path | None, burst: bool) -> None:
    """Listen until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EngineProtocol(burst), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)  # atomic: the reader never sees a half-written port
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, default=None)
    parser.add_argument("--burst", action="store_true", help="send a whole stream in one write")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.port_file, args.burst))


if __name__ == "__main__":
    main()
