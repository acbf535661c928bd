"""Usage recorded exactly from real llama-server replicas: stream, non-stream, cached tokens, client hang-ups."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.checks import check_usage_recorded_exactly, client, ledger_rows
from tests.e2e.conftest import DEMO_KEY, Stack

pytestmark = pytest.mark.e2e


def test_non_stream_and_stream_usage_recorded_exactly_with_cached_tokens(llama_stack: Stack) -> None:
    # Six identical prompts, round-robin over two replicas: each replica sees the prompt three times.
    by_replica = check_usage_recorded_exactly(llama_stack)
    assert len(by_replica) == 2, by_replica


def test_client_disconnect_records_partial_usage(llama_stack: Stack) -> None:
    body = json.dumps(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Count from one to one hundred in words."}],
            "max_tokens": 200,
            "stream": True,
            "ignore_eos": True,  # llama.cpp: the stream cannot end on its own before the client leaves
        }
    ).encode()
    request = urllib.request.Request(
        f"{llama_stack.url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"},
    )
    resp = urllib.request.urlopen(request, timeout=60)
    rid = resp.headers["x-request-id"]
    received = b""
    while received.count(b"\n\n") < 6:  # a few chunks, then hang up
        received += resp.read1(4096)
    resp.close()
    rows = ledger_rows({rid})
    row = rows[rid]
    assert row["status"] == "client_abort"
    # llama.cpp's running counts (timings_per_token) on the last chunk the gateway received: the engine's own numbers
    assert row["usage_source"] == "engine"
    assert row["prompt_tokens"] > 10
    assert 0 < row["completion_tokens"] < 200
    # The engine's own tokenizer agrees with what it bills for the same prompt when usage does arrive.
    full = client(llama_stack).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        max_tokens=1,
    )
    assert full.usage is not None and full.usage.prompt_tokens == row["prompt_tokens"]
