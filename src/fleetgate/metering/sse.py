"""SSE pass-through that reads only what metering needs: event boundaries and the engine's usage block."""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.engines.base import RunningCounts

# An event larger than this is not an engine's chunk: the stream is treated as broken rather than buffered forever.
MAX_EVENT_BYTES = 4 << 20


class EventTooLarge(Exception):
    """The engine sent more than MAX_EVENT_BYTES without ending an event."""


def _has_usage(data: bytes) -> bool:
    # Called on every chunk: two substring scans in C, no generator.
    return b'"usage":{' in data or b'"usage": {' in data


def _ends_stream(complete: bytes, delim: bytes) -> bool:
    """True if one of these whole events is the end marker: a `data:` line whose whole value is `[DONE]`.

    A JSON string cannot hold a raw newline, so `[DONE]` inside generated text (`"content":" [DONE]"`) never
    stands alone on a line; only a line of its own ends the stream. The caller checked that `[DONE]` occurs."""
    marker = b"data: [DONE]" + delim  # how vLLM, llama.cpp and SGLang end a stream: found with two scans in C
    if complete.startswith(marker) or delim + marker in complete:
        return True
    return any(  # any other spelling (`data:[DONE]`, a trailing space, an `event:` line before it)
        line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in complete.splitlines() if line
    )


class SSERelay:
    """Feeds on upstream bytes and returns the bytes to forward, whole events only.

    Bytes pass through untouched except one case: when the gateway forced `include_usage` and the client did not
    ask for it, the usage-only event (`choices: []`) is dropped so the client sees what the engine would have sent.
    """

    __slots__ = (
        "_buf",
        "_delim",
        "_drop_usage_event",
        "_last_counts",
        "_max_event_bytes",
        "_running",
        "content_events",
        "done",
        "events",
        "usage",
    )

    def __init__(
        self,
        drop_usage_event: bool,
        max_event_bytes: int = MAX_EVENT_BYTES,
        running_counts: RunningCounts | None = None,
    ) -> None:
        self._buf = b""
        self._running = running_counts  # the engine dialect's running counts on each chunk, if it streams them
        self._max_event_bytes = max_event_bytes
        self._delim = b""
        self._drop_usage_event = drop_usage_event
        self.usage: dict[str, Any] | None = None
        self.events = 0
        self.content_events = 0  # chunks that carried generated text: the partial count if usage never comes
        self.done = False
        self._last_counts = b""  # the latest events that carried running counts (kept, not parsed)

    def feed(self, data: bytes) -> bytes:
        """Take a piece of the upstream stream; return the complete events to forward now.

        Raises EventTooLarge when more than `max_event_bytes` arrive without an event boundary."""
        buf = self._buf + data if self._buf else data
        if not self._delim:
            if b"\n" not in buf:
                return self._hold(buf)
            self._delim = b"\r\n\r\n" if b"\r\n" in buf else b"\n\n"
        cut = buf.rfind(self._delim)
        if cut < 0:
            return self._hold(buf)
        cut += len(self._delim)
        complete, self._buf = buf[:cut], buf[cut:]
        self.events += complete.count(self._delim)
        self.content_events += _content_count(complete)
        if b"[DONE]" in complete and _ends_stream(complete, self._delim):  # the first test is the common exit
            self.done = True
        if self._running is not None and self._running.marker in complete:
            self._last_counts = complete
        if _has_usage(complete):
            return self._take_usage(complete)
        return complete

    def engine_counts(self) -> dict[str, Any] | None:
        """The engine's own running counts when its usage block never came (llama.cpp `timings_per_token`): the
        latest received, as a usage block, so an aborted stream bills what the engine really did."""
        running = self._running
        if running is None or not self._last_counts:
            return None
        latest_first = reversed(self._last_counts.split(self._delim))
        return running.read(_data_of(event) for event in latest_first if running.marker in event)

    def _hold(self, buf: bytes) -> bytes:
        if len(buf) > self._max_event_bytes:
            raise EventTooLarge(f"an SSE event passed {self._max_event_bytes} bytes without ending")
        self._buf = buf
        return b""

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
    # vLLM and llama.cpp write compact JSON; Python servers (json.dumps) put a space after the colon.
    count = (
        data.count(b'"content":"') - data.count(b'"content":""') + data.count(b'"text":"') - data.count(b'"text":""')
    )
    if b'": "' in data:
        count += data.count(b'"content": "') - data.count(b'"content": ""')
        count += data.count(b'"text": "') - data.count(b'"text": ""')
    return count


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
