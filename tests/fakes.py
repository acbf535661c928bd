"""An in-process fake OpenAI engine (real HTTP on 127.0.0.1) whose behaviour each test sets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
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
    mode: str = "ok"  # ok | error500 | error400 | hang | stall | break | slow | no_done | drop_first
    chunks: int = 4
    chunks_from_max_tokens: bool = False  # stream exactly max_tokens chunks (length varies per request)
    delay: float = 0.0
    text: str | None = None  # every streamed chunk's content (default "t<i> ")
    usage: dict[str, Any] | None = None  # the usage block to report (default: 7 prompt, 3 cached)
    error_answer: tuple[int, Any] | None = None  # (status, JSON body) answered to every completion request
    owned_by: str | None = None  # signs its /v1/models entries (vllm, llamacpp, sglang): the gateway detects the kind
    context_len: int | None = None  # reported in /v1/models as its kind does (`max_model_len`, llama.cpp `meta.n_ctx`)
    # Returns why a body is refused (answered 400 in llama-server's shape, integer code), or None to serve it.
    validate: Callable[[dict[str, Any]], str | None] | None = None
    hold: asyncio.Event | None = None  # a stream sends its first chunk, then waits for this before the rest
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    served: int = 0
    # What the usage blocks it sent added up to: blocks, prompt_tokens, completion_tokens, cached_tokens.
    reported: dict[str, int] = field(default_factory=dict)
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
        entry: dict[str, Any] = {"id": self.model, "object": "model"}
        if self.owned_by is not None:
            entry["owned_by"] = self.owned_by
        if self.context_len is not None and self.owned_by == "llamacpp":
            entry["meta"] = {"n_ctx": self.context_len}  # where llama-server reports the per-slot context
        elif self.context_len is not None:
            entry["max_model_len"] = self.context_len
        return web.json_response({"object": "list", "data": [entry]})

    def _usage(self, completion: int) -> dict[str, Any]:
        if self.usage is not None:
            return self.usage
        return {
            "prompt_tokens": 7,
            "completion_tokens": completion,
            "total_tokens": 7 + completion,
            "prompt_tokens_details": {"cached_tokens": 3},
        }

    def _reported(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Count a usage block about to be sent (what the ledger must add up to)."""
        details = usage.get("prompt_tokens_details") or {}
        for name, value in (
            ("blocks", 1),
            ("prompt_tokens", usage.get("prompt_tokens", 0)),
            ("completion_tokens", usage.get("completion_tokens", 0)),
            ("cached_tokens", details.get("cached_tokens", 0)),
        ):
            self.reported[name] = self.reported.get(name, 0) + int(value)
        return usage

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:  # as real engines do (the health check's probe sends a body that is not JSON)
            return web.json_response({"error": {"message": "not JSON", "type": "invalid_request_error"}}, status=400)
        self.bodies.append(body)
        if self.mode == "drop_first" and self._drops_left > 0:
            self._drops_left -= 1
            assert request.transport is not None
            request.transport.close()  # like a stale keep-alive connection: no response at all
            await asyncio.sleep(1)
        if self.error_answer is not None:
            return web.json_response(self.error_answer[1], status=self.error_answer[0])
        refused = self.validate(body) if self.validate is not None else None
        if refused is not None:
            return web.json_response(
                {"error": {"code": 400, "message": refused, "type": "invalid_request_error"}}, status=400
            )
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
                    "usage": self._reported(self._usage(self.chunks)),
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunks = int(body.get("max_tokens") or self.chunks) if self.chunks_from_max_tokens else self.chunks
        try:
            for i in range(chunks):
                if self.mode == "stall" and i == 2:  # stalled mid-stream: alive, connected, silent until cut off
                    while request.transport is not None and not request.transport.is_closing():
                        await asyncio.sleep(0.05)
                    self.cancelled += 1
                    return resp
                if self.mode == "break" and i == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": self.text if self.text is not None else f"t{i} "}}],
                }
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if i == 0 and self.hold is not None:
                    await self.hold.wait()
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
                self._reported(self._usage(chunks))
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
