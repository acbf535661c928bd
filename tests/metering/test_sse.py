"""SSE pass-through: whole events, untouched bytes, usage captured, usage-only event dropped when not asked for."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.metering.sse import SSERelay


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


CONTENT = [_event({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}], "usage": None}) for i in range(5)]
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}})
STREAM = b"".join(CONTENT) + USAGE + b"data: [DONE]\n\n"


def _run(relay: SSERelay, pieces: list[bytes]) -> bytes:
    return b"".join(relay.feed(p) for p in pieces) + relay.flush()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_split_passes_bytes_through_when_usage_wanted(cuts: list[int]) -> None:
    relay = SSERelay(drop_usage_event=False)
    assert _run(relay, _split(STREAM, cuts)) == STREAM
    assert relay.usage == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    assert relay.done and relay.events == 7


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_split_drops_only_the_usage_event(cuts: list[int]) -> None:
    relay = SSERelay(drop_usage_event=True)
    assert _run(relay, _split(STREAM, cuts)) == b"".join(CONTENT) + b"data: [DONE]\n\n"
    assert relay.usage is not None and relay.usage["completion_tokens"] == 5


def test_only_whole_events_are_forwarded() -> None:
    relay = SSERelay(drop_usage_event=True)
    assert relay.feed(CONTENT[0][:10]) == b""
    assert relay.feed(CONTENT[0][10:]) == CONTENT[0]


def test_usage_on_a_content_chunk_is_kept() -> None:
    # vLLM's continuous usage stats put usage on every chunk: those chunks carry choices and must pass.
    chunk = _event({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"completion_tokens": 1}})
    relay = SSERelay(drop_usage_event=True)
    assert relay.feed(chunk) == chunk
    assert relay.usage == {"completion_tokens": 1}


def test_crlf_delimited_streams() -> None:
    stream = STREAM.replace(b"\n\n", b"\r\n\r\n")
    relay = SSERelay(drop_usage_event=True)
    out = _run(relay, [stream[:50], stream[50:]])
    assert b'"choices": []' not in out and out.endswith(b"data: [DONE]\r\n\r\n")
    assert relay.usage is not None


def test_unterminated_tail_is_flushed_and_no_done() -> None:
    relay = SSERelay(drop_usage_event=False)
    assert relay.feed(CONTENT[0] + b"data: {partial") == CONTENT[0]
    assert relay.flush() == b"data: {partial"
    assert not relay.done
