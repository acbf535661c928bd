"""An in-process fake OpenAI engine (real HTTP on 127.0.0.1) whose behaviour each test sets."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def free_port() -> int:
    """A free 127.0.0.1 port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeEngine:
    """Behaviour knobs and what the engine saw."""

    model: str = "fake"
    mode: str = "ok"  # ok | error500 | error400 | hang | break | slow | no_done | drop_first
    chunks: int = 4
    chunks_from_max_tokens: bool = False  # stream exactly max_tokens chunks (length varies per request)
    delay: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    served: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _drops_left: int = 0

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free port."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def _usage(self, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": 7,
            "completion_tokens": completion,
            "total_tokens": 7 + completion,
            "prompt_tokens_details": {"cached_tokens": 3},
        }

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if self.mode == "drop_first" and self._drops_left > 0:
            self._drops_left -= 1
            assert request.transport is not None
            request.transport.close()  # like a stale keep-alive connection: no response at all
            await asyncio.sleep(1)
        if self.mode == "error500":
            return web.json_response({"error": {"message": "boom", "code": 500}}, status=500)
        if self.mode == "error400":
            return web.json_response(
                {"error": {"message": "context too long", "type": "invalid_request_error"}}, status=400
            )
        if self.mode == "hang":
            await asyncio.sleep(3600)
        self.served += 1
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "model": self.model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
                    ],
                    "usage": self._usage(self.chunks),
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunks = int(body.get("max_tokens") or self.chunks) if self.chunks_from_max_tokens else self.chunks
        try:
            for i in range(chunks):
                if self.mode == "break" and i == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": f"t{i} "}}],
                }
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if self.delay or self.mode == "slow":
                    await asyncio.sleep(self.delay or 0.2)
            final = {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            }
            await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": self._usage(chunks)}
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            if self.mode != "no_done":
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return resp

    def drop_next(self, n: int) -> None:
        """Close the next n connections without answering."""
        self.mode = "drop_first"
        self._drops_left = n
