"""Checks shared by the end-to-end suites that run against every embedded engine (llama.cpp and vLLM fleets)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai

from tests.e2e.conftest import DEMO_KEY, Stack

# ~450 tokens of system prompt: long enough that either engine's prefix cache visibly reuses it.
METERING_SYSTEM = " ".join(
    f"Rule {i}: answer briefly, politely and only in English about topic number {i}." for i in range(30)
)
ROUTING_SYSTEM = " ".join(f"Policy {i}: keep answers short, cite no sources, stay polite." for i in range(40))


def client(stack: Stack, key: str = DEMO_KEY) -> openai.OpenAI:
    """The official SDK pointed at the stack's gateway (no SDK retries: the gateway's own are under test)."""
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=120)


def ledger_rows(ids: set[str], timeout: float = 20) -> dict[str, dict[str, Any]]:
    """Ledger rows of these request ids from the default SQLite ledger, waiting (bounded) for the flusher."""
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


def check_usage_recorded_exactly(stack: Stack) -> dict[str, list[int]]:
    """Stream and non-stream usage land in the ledger exactly as the engine reported it, cached tokens
    included; returns the cached-token counts per replica, in order."""
    sdk = client(stack)
    messages = [{"role": "system", "content": METERING_SYSTEM}, {"role": "user", "content": "Say hi."}]
    seen: dict[str, tuple[str, Any]] = {}
    for i in range(6):
        if i % 2 == 0:
            raw = sdk.chat.completions.with_raw_response.create(model="smollm2", messages=messages, max_tokens=4)  # type: ignore[arg-type]
            seen[raw.headers["x-request-id"]] = (raw.headers["x-fleetgate-replica"], raw.parse().usage)
        else:
            raw_stream = sdk.chat.completions.with_raw_response.create(
                model="smollm2",
                messages=messages,
                max_tokens=4,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
            chunks = list(raw_stream.parse())
            seen[raw_stream.headers["x-request-id"]] = (raw_stream.headers["x-fleetgate-replica"], chunks[-1].usage)
    rows = ledger_rows(set(seen))
    assert set(rows) == set(seen)
    by_replica: dict[str, list[int]] = {}
    for rid, (replica, usage) in seen.items():
        row = rows[rid]
        assert row["status"] == "ok" and row["usage_source"] == "engine" and row["replica_id"] == replica
        assert row["prompt_tokens"] == usage.prompt_tokens > 400
        assert row["completion_tokens"] == usage.completion_tokens > 0
        details = usage.prompt_tokens_details
        assert row["cached_tokens"] == ((details.cached_tokens or 0) if details is not None else 0)
        by_replica.setdefault(replica, []).append(row["cached_tokens"])
    # By the third time a replica sees the same long prefix the engine reports it cached (llama-server with
    # `--slot-prompt-similarity 0`: the second lands in the fresh replica's empty slot before anything was saved).
    assert any(cached[-1] > 0 for cached in by_replica.values()), by_replica
    return by_replica


def tenant_key(stack: Stack, name: str) -> str:
    """Create a tenant and a key with the CLI; the key."""
    assert stack.cli("tenants", "create", name, "--json").returncode == 0
    result = stack.cli("keys", "create", name, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["key"])


def ask(
    stack: Stack, key: str, user: str, system: str = ROUTING_SYSTEM, **extra: Any
) -> tuple[str, str, int, dict[str, str]]:
    """One short chat completion: (replica, route, cached prompt tokens, response headers)."""
    sdk = client(stack, key)
    raw = sdk.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],  # type: ignore[list-item]
        max_tokens=3,
        **extra,
    )
    usage = raw.parse().usage
    assert usage is not None
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0  # vLLM sends null for none cached
    return raw.headers["x-fleetgate-replica"], raw.headers["x-fleetgate-route"], cached, dict(raw.headers)


def check_prefix_locality_and_tenant_isolation(stack: Stack, min_cached: int, tag: str, warm_from: int = 1) -> None:
    """One tenant's conversation stays on one replica and hits the engine's cache from request `warm_from` on;
    another tenant with the very same system prompt is not steered by the first tenant's index entries. `tag` keeps
    the tenant names apart from other suites' (the e2e session shares one database)."""
    alice = tenant_key(stack, f"{tag}-alice")
    answers = [ask(stack, alice, f"Question {i}?") for i in range(4)]
    replicas = {replica for replica, _, _, _ in answers}
    assert len(replicas) == 1, answers
    assert all(route.startswith("score:prefix") for _, route, _, _ in answers[1:]), answers
    assert all(cached >= min_cached for _, _, cached, _ in answers[warm_from:]), answers
    bob = tenant_key(stack, f"{tag}-bob")
    _, route, _, _ = ask(stack, bob, "Question 0?")
    assert not route.startswith("score:prefix"), route
