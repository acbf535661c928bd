"""Usage recorded exactly from real llama-server replicas: stream, non-stream, cached tokens, client hang-ups."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import DEMO_KEY, Stack

pytestmark = pytest.mark.e2e

# ~450 tokens of system prompt: long enough that llama.cpp's prompt cache visibly reuses it.
SYSTEM = " ".join(f"Rule {i}: answer briefly, politely and only in English about topic number {i}." for i in range(30))


def _ledger_rows(ids: set[str], timeout: float = 20) -> dict[str, dict[str, Any]]:
    db = Path(os.environ["FLEETGATE_STATE_DIR"]) / "fleetgate.db"
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                marks = ",".join("?" * len(ids))
                found = conn.execute(f"SELECT * FROM usage_events WHERE event_id IN ({marks})", list(ids)).fetchall()
            rows = {r["event_id"]: dict(r) for r in found}
            if set(rows) == ids:
                return rows
        time.sleep(0.2)
    return rows


def _client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=DEMO_KEY, max_retries=0, timeout=120)


def test_non_stream_and_stream_usage_recorded_exactly_with_cached_tokens(llama_stack: Stack) -> None:
    client = _client(llama_stack)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Say hi."}]
    seen: dict[str, tuple[str, Any]] = {}
    # Four identical prompts, round-robin over two replicas: each replica sees the prompt twice.
    for i in range(4):
        if i % 2 == 0:
            raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=messages, max_tokens=4)  # type: ignore[arg-type]
            seen[raw.headers["x-request-id"]] = (raw.headers["x-fleetgate-replica"], raw.parse().usage)
        else:
            raw_stream = client.chat.completions.with_raw_response.create(
                model="smollm2",
                messages=messages,
                max_tokens=4,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
            chunks = list(raw_stream.parse())
            seen[raw_stream.headers["x-request-id"]] = (raw_stream.headers["x-fleetgate-replica"], chunks[-1].usage)
    rows = _ledger_rows(set(seen))
    assert set(rows) == set(seen)
    by_replica: dict[str, list[int]] = {}
    for rid, (replica, usage) in seen.items():
        row = rows[rid]
        assert row["status"] == "ok" and row["usage_source"] == "engine" and row["replica_id"] == replica
        assert row["prompt_tokens"] == usage.prompt_tokens > 400
        assert row["completion_tokens"] == usage.completion_tokens > 0
        assert row["cached_tokens"] == usage.prompt_tokens_details.cached_tokens
        by_replica.setdefault(replica, []).append(row["cached_tokens"])
    # The second time a replica sees the same long prefix, the engine reports it cached.
    assert any(cached[-1] > 0 for cached in by_replica.values()), by_replica


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
    rows = _ledger_rows({rid})
    row = rows[rid]
    assert row["status"] == "client_abort"
    assert row["usage_source"] == "partial_count"  # prompt from the engine's tokenizer, completion counted
    assert row["prompt_tokens"] > 10
    assert 0 < row["completion_tokens"] < 200
    # The engine's own tokenizer agrees with what it bills for the same prompt when usage does arrive.
    full = _client(llama_stack).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        max_tokens=1,
    )
    assert full.usage is not None and full.usage.prompt_tokens == row["prompt_tokens"]
