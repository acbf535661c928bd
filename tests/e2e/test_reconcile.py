"""On a real llama.cpp fleet, the ledger's token totals equal the engines' own counters: reconcile drift 0."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import DEMO_KEY, Stack, require_engine, require_vllm, start_stack, stop_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_engine()
    stack = start_stack(tmp_path_factory.mktemp("reconcile"), "--replicas", "2")
    try:
        yield stack
    finally:
        stop_stack(stack)


def test_reconcile_drift_is_zero(fresh_stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{fresh_stack.url}/v1", api_key=DEMO_KEY, max_retries=0, timeout=120)
    system = "You are terse. " * 40
    for i in range(6):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Name a color ({i})."}]
        if i % 2:
            list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=5, stream=True))  # type: ignore[arg-type]
        else:
            client.chat.completions.create(model="smollm2", messages=messages, max_tokens=5)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while True:
        result = fresh_stack.cli("usage", "reconcile", "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["replicas"]
        settled = all(r["prompt_drift"] == 0 and r["completion_drift"] == 0 for r in rows)
        if (rows and settled) or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # events may still be on their way from the outbox
    assert sorted(r["replica_id"] for r in rows) == ["local-0", "local-1"]
    assert sum(r["requests"] for r in rows) == 6  # however the router spread them (score keeps the prefix local)
    for row in rows:
        assert row["error"] is None, row
        assert (row["prompt_drift"], row["completion_drift"]) == (0, 0), row
    assert sum(r["ledger_prompt"] for r in rows) > 0 and sum(r["ledger_completion"] for r in rows) > 0


# --- the vLLM tier -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two local vLLM replicas (`fleetgate up --local vllm`): reconcile must read them as vLLM."""
    require_vllm()
    stack = start_stack(tmp_path_factory.mktemp("reconcile-vllm"), "--local", "vllm", "--replicas", "2", timeout=900)
    try:
        yield stack
    finally:
        stop_stack(stack)


def _vllm_rows(stack: Stack, requests: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = stack.cli("usage", "reconcile", "--json")
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)["replicas"]
        # Totals (prompt incl. cached, output) settle; the cached split is each test's to check.
        settled = all(
            r["error"] is None and r["prompt_drift"] + r["cached_drift"] == r["completion_drift"] == 0 for r in rows
        )
        if (rows and settled and sum(r["requests"] for r in rows) >= requests) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)  # events may still be on their way from the outbox


def test_vllm_reconcile_drift_is_zero(vllm_stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{vllm_stack.url}/v1", api_key=DEMO_KEY, max_retries=0, timeout=120)
    system = "You are terse and always answer in lists. " * 12  # > 128 tokens: later requests hit vLLM's cache
    for i in range(6):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Name a color ({i})."}]
        if i % 2:
            list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=5, stream=True))  # type: ignore[arg-type]
        else:
            client.chat.completions.create(model="smollm2", messages=messages, max_tokens=5)  # type: ignore[arg-type]
    rows = _vllm_rows(vllm_stack, 6)
    assert sorted(r["replica_id"] for r in rows) == ["vllm-0", "vllm-1"], rows
    assert {r["kind"] for r in rows} == {"vllm"}, rows  # not read as llama.cpp (no llamacpp:* counters there)
    assert sum(r["requests"] for r in rows) == 6
    for row in rows:
        assert row["error"] is None and row["basis"] == "fresh", row
        assert (row["prompt_drift"], row["cached_drift"], row["completion_drift"]) == (0, 0, 0), row
    assert sum(r["engine_cached"] for r in rows) > 0  # the shared prefix was cached, and the ledger says so


def test_vllm_drift_after_client_aborts(vllm_stack: Stack) -> None:
    """Streams left mid-way: vLLM counted their whole prompt (with its cached blocks) and what it generated."""
    before = {r["replica_id"]: r for r in _vllm_rows(vllm_stack, 0, timeout=0)}
    system = "You are terse and always answer in lists. " * 12
    for i in range(4):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Count to 300 ({i})."}]
        payload = {"model": "smollm2", "messages": messages, "max_tokens": 300, "stream": True}
        request = urllib.request.Request(
            f"{vllm_stack.url}/v1/chat/completions",
            data=json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            seen = 0
            while seen < 3 + i:
                seen += b'"content"' in resp.readline()
        # leaving the block closes the connection mid-stream
    rows = _vllm_rows(vllm_stack, sum(r["requests"] for r in before.values()) + 4)
    after = {r["replica_id"]: r for r in rows}
    detail = json.dumps(rows)
    assert sum(after[k]["requests"] - before[k]["requests"] for k in after) == 4, detail
    for row in rows:
        # Prompt tokens (the engine's own count) and output tokens match exactly: prompt drift is only the cached part.
        assert (row["prompt_drift"] + row["cached_drift"], row["completion_drift"]) == (0, 0), detail
    # vLLM tells cached tokens only in a stream's last usage block, which an aborted stream never gets: the ledger
    # says 0 and the engine cached whole 128-token blocks of those prompts (docs/architecture.md, Reconcile).
    unknown = sum(r["cached_drift"] for r in rows)
    aborted_prompts = sum(after[k]["ledger_prompt"] - before[k]["ledger_prompt"] for k in after)  # ledger: 0 cached
    assert 0 <= unknown <= aborted_prompts and unknown % 128 == 0, detail
