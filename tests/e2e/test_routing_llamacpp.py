"""The default `score` router on two real llama-server replicas: prefix locality, tenant isolation, failover."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.e2e.conftest import Stack, require_engine, start_stack, stop_stack

pytestmark = pytest.mark.e2e
ADMIN = "fg-admin-0123456789abcdef"
SYSTEM = " ".join(f"Policy {i}: keep answers short, cite no sources, stay polite." for i in range(40))


@pytest.fixture(scope="module")
def score_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_engine()
    stack = start_stack(tmp_path_factory.mktemp("score"), "--replicas", "2")  # routing.policy defaults to score
    try:
        yield stack
    finally:
        stop_stack(stack)


def _tenant_key(stack: Stack, name: str) -> str:
    assert stack.cli("tenants", "create", name, "--json").returncode == 0
    result = stack.cli("keys", "create", name, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["key"])


def _ask(stack: Stack, key: str, user: str, system: str = SYSTEM) -> tuple[str, str, int]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],  # type: ignore[list-item]
        max_tokens=3,
    )
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    return raw.headers["x-fleetgate-replica"], raw.headers["x-fleetgate-route"], cached


def test_prefix_locality_and_tenant_isolation(score_stack: Stack) -> None:
    alice = _tenant_key(score_stack, "alice")
    answers = [_ask(score_stack, alice, f"Question {i}?") for i in range(4)]
    replicas = {replica for replica, _, _ in answers}
    assert len(replicas) == 1, answers  # one conversation prefix stays on one replica
    assert all(route.startswith("score:prefix") for _, route, _ in answers[1:]), answers
    assert all(cached > 300 for _, _, cached in answers[1:]), answers  # the engine reused the long prefix
    # Another tenant with the very same system prompt is not steered by alice's index entries.
    bob = _tenant_key(score_stack, "bob")
    _, route, _ = _ask(score_stack, bob, "Question 0?")
    assert not route.startswith("score:prefix"), route


def test_failover_and_readmission(score_stack: Stack) -> None:
    key = _tenant_key(score_stack, "carol")
    victim = score_stack.state()["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    started = time.monotonic()
    for i in range(4):  # every request succeeds on the survivor, none hangs
        replica, _, _ = _ask(score_stack, key, f"During the outage {i}?", system="Be brief.")
        assert replica == "local-1"
    assert time.monotonic() - started < 60
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = json.loads(score_stack.cli("status", "--json").stdout)
        if score_stack.state()["replicas"][0]["pid"] != victim["pid"] and all(r["healthy"] for r in status["replicas"]):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the killed replica did not come back within 90 s")
    time.sleep(2.5)  # one health-check interval, so the gateway sees it healthy again
    # Concurrent requests with unrelated prompts: load-aware tie-breaking uses both replicas again.
    with ThreadPoolExecutor(4) as pool:
        seen = set()
        prompts = [f"After {round_}-{i}?" for round_ in range(3) for i in range(4)]
        for batch in (prompts[0:4], prompts[4:8], prompts[8:12]):
            seen |= {r for r, _, _ in pool.map(lambda p: _ask(score_stack, key, p, "Hi."), batch)}
    assert seen == {"local-0", "local-1"}
