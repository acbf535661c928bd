"""The default `score` router on two real llama-server replicas: prefix locality, tenant isolation, failover."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.checks import ask, check_prefix_locality_and_tenant_isolation, tenant_key
from tests.e2e.conftest import Stack, require_engine, start_stack, stop_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def score_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_engine()
    stack = start_stack(tmp_path_factory.mktemp("score"), "--replicas", "2")  # routing.policy defaults to score
    try:
        yield stack
    finally:
        stop_stack(stack)


def test_prefix_locality_and_tenant_isolation(score_stack: Stack) -> None:
    check_prefix_locality_and_tenant_isolation(score_stack, min_cached=300, tag="llama")


def test_failover_and_readmission(score_stack: Stack) -> None:
    key = tenant_key(score_stack, "carol")
    victim = score_stack.state()["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    started = time.monotonic()
    for i in range(4):  # every request succeeds on the survivor, none hangs
        replica, _, _, _ = ask(score_stack, key, f"During the outage {i}?", system="Be brief.")
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
            seen |= {r for r, _, _, _ in pool.map(lambda p: ask(score_stack, key, p, "Hi."), batch)}
    assert seen == {"local-0", "local-1"}
