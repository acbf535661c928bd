"""SSE pass-through: whole events, untouched bytes, usage captured, usage-only event dropped when not asked for."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.engines.registry import adapter_for
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


def test_done_inside_generated_text_does_not_end_the_stream() -> None:
    # Issue 17.1: "[DONE]" in a JSON string is text, not the end marker; usage that follows must still be read.
    text = _event({"choices": [{"index": 0, "delta": {"content": " [DONE]"}}]})
    compact = b'data: {"choices":[{"index":0,"delta":{"content":"data: [DONE]"}}]}\n\n'
    relay = SSERelay(drop_usage_event=True)
    relay.feed(CONTENT[0] + text + compact)
    assert not relay.done
    relay.feed(USAGE)
    assert not relay.done and relay.usage is not None
    relay.feed(b"data: [DONE]\n\n")
    assert relay.done


def test_done_marker_variants_end_the_stream() -> None:
    for marker in (b"data: [DONE]\n\n", b"data:[DONE]\n\n", b"event: end\ndata: [DONE]\n\n", b"data: [DONE] \r\n\r\n"):
        relay = SSERelay(drop_usage_event=False)
        relay.feed(marker)
        assert relay.done, marker


def test_an_event_that_never_ends_is_bounded() -> None:
    from fleetgate.metering.sse import EventTooLarge

    relay = SSERelay(drop_usage_event=False, max_event_bytes=1000)
    relay.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        relay.feed(b"x" * 200)


def test_a_cut_llamacpp_stream_reports_the_engines_running_counts() -> None:
    # llama-server with timings_per_token puts its counts on every chunk: a stream cut before the usage block
    # still knows prompt (computed + cached), cached and generated tokens exactly.
    chunk = _event(
        {"choices": [{"delta": {"content": "a"}}], "timings": {"prompt_n": 8, "cache_n": 213, "predicted_n": 5}}
    )
    later = _event(
        {"choices": [{"delta": {"content": "b"}}], "timings": {"prompt_n": 8, "cache_n": 213, "predicted_n": 6}}
    )
    relay = SSERelay(drop_usage_event=True, running_counts=adapter_for("llamacpp").running_counts)
    assert relay.engine_counts() is None
    relay.feed(chunk + later)
    other = SSERelay(drop_usage_event=True, running_counts=adapter_for("vllm").running_counts)
    other.feed(chunk + later)
    assert other.engine_counts() is None  # only a dialect that streams running counts is read for them
    assert relay.engine_counts() == {
        "prompt_tokens": 221,
        "completion_tokens": 6,
        "total_tokens": 227,
        "prompt_tokens_details": {"cached_tokens": 213},
    }
