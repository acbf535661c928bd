"""SSE pass-through that reads only what metering needs: event boundaries and the engine's usage block."""

from __future__ import annotations

from typing import Any

import orjson


def _has_usage(data: bytes) -> bool:
    # Called on every chunk: two substring scans in C, no generator.
    return b'"usage":{' in data or b'"usage": {' in data


class SSERelay:
    """Feeds on upstream bytes and returns the bytes to forward, whole events only.

    Bytes pass through untouched except one case: when the gateway forced `include_usage` and the client did not
    ask for it, the usage-only event (`choices: []`) is dropped so the client sees what the engine would have sent.
    """

    __slots__ = ("_buf", "_delim", "_drop_usage_event", "content_events", "done", "events", "usage")

    def __init__(self, drop_usage_event: bool) -> None:
        self._buf = b""
        self._delim = b""
        self._drop_usage_event = drop_usage_event
        self.usage: dict[str, Any] | None = None
        self.events = 0
        self.content_events = 0  # chunks that carried generated text: the partial count if usage never comes
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Take a piece of the upstream stream; return the complete events to forward now."""
        buf = self._buf + data if self._buf else data
        if not self._delim:
            if b"\n" not in buf:
                self._buf = buf
                return b""
            self._delim = b"\r\n\r\n" if b"\r\n" in buf else b"\n\n"
        cut = buf.rfind(self._delim)
        if cut < 0:
            self._buf = buf
            return b""
        cut += len(self._delim)
        complete, self._buf = buf[:cut], buf[cut:]
        self.events += complete.count(self._delim)
        self.content_events += _content_count(complete)
        if b"[DONE]" in complete:
            self.done = True
        if _has_usage(complete):
            return self._take_usage(complete)
        return complete

    def flush(self) -> bytes:
        """Whatever is left when the upstream ends (an unterminated last event)."""
        rest, self._buf = self._buf, b""
        return rest

    def _take_usage(self, complete: bytes) -> bytes:
        kept: list[bytes] = []
        dropped = False
        for event in complete.split(self._delim):
            if not event:
                continue
            if _has_usage(event):
                payload = _data_of(event)
                if payload is not None and isinstance(payload.get("usage"), dict):
                    self.usage = payload["usage"]
                    if self._drop_usage_event and not payload.get("choices"):
                        dropped = True
                        continue
            kept.append(event)
        if not dropped:
            return complete
        return b"".join(event + self._delim for event in kept)


def _content_count(data: bytes) -> int:
    # Engines stream about one token per chunk; counting non-empty content/text fields needs no JSON parsing.
    return data.count(b'"content":"') - data.count(b'"content":""') + data.count(b'"text":"') - data.count(b'"text":""')


def _data_of(event: bytes) -> dict[str, Any] | None:
    # An SSE event may carry several `data:` lines; their values join with newlines.
    lines = [line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        value = orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
