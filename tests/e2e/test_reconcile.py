"""On a real llama.cpp fleet, the ledger's token totals equal the engines' own counters: reconcile drift 0."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import DEMO_KEY, Stack, require_engine, start_stack, stop_stack

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
