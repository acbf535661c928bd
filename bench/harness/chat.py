"""One streamed chat completion as a client sees it: status, headers, time to the first content token, the reply
and the usage chunk (when asked for)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT_PATH = "/v1/chat/completions"


@dataclass
class StreamReply:
    """What came back: `ttft` is seconds to the first chunk carrying content (None if none did)."""

    status: int
    headers: Mapping[str, str]
    ttft: float | None = None
    elapsed: float = 0.0
    parts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error_body: bytes = b""  # the answer of a refused request (its start)

    @property
    def text(self) -> str:
        """The reply's content."""
        return "".join(self.parts)


def _content(event: dict[str, Any]) -> list[str]:
    return [text for c in event.get("choices") or () if (text := (c.get("delta") or {}).get("content"))]


async def stream_chat(
    session: aiohttp.ClientSession, base: str, body: bytes | Mapping[str, Any], headers: Mapping[str, str]
) -> StreamReply:
    """POST `body` to `base`/v1/chat/completions and read the stream to its end (aiohttp errors propagate)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    began = time.perf_counter()
    async with session.post(base + CHAT_PATH, data=data, headers=dict(headers)) as resp:
        reply = StreamReply(resp.status, resp.headers)
        if resp.status != 200:
            reply.error_body = (await resp.read())[:300]
            reply.elapsed = time.perf_counter() - began
            return reply
        async for line in resp.content:
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = orjson.loads(line[5:])
            texts = _content(event)
            if texts and reply.ttft is None:
                reply.ttft = time.perf_counter() - began
            reply.parts += texts
            if event.get("usage"):
                reply.usage = event["usage"]
    reply.elapsed = time.perf_counter() - began
    return reply


def chat_headers(key: str | None) -> dict[str, str]:
    """JSON content type and the bearer key (when there is one)."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers
