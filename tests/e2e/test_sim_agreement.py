"""The real-time simulator and the offline one agree: same workload, same policy, cache hit ratio within 2 points.

A small multi-tenant chat workload (tenants with their own system prompts, multi-turn conversations whose
follow-ups quote the engine's real replies) goes through `fleetgate up` in front of 3 `sim-engine` processes with
the `score` policy, and every request is recorded (arrival, tenant, messages, reply). The recording is then
replayed by `fleetgate simulate --trace` on 3 simulated replicas of the same profile with the same policy and
seed: the gateway's own router and admission code, in simulated time. Both cached-token ratios (cached prompt
tokens over prompt tokens, from the engines' usage) must be within 2 percentage points.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetgate.sim.text import WORDS
from tests.e2e.conftest import FLEETGATE
from tests.e2e.sim_fleet import gateway, gateway_config, sim_engines, tenant_key

pytestmark = pytest.mark.e2e

PROFILE = "h100-llama3-8b"
REPLICAS = 3
POLICY = "score"
SEED = 11
TENANTS, CONVERSATIONS, TURNS = 3, 3, 3  # 27 requests
CONCURRENCY = 3
MAX_TOKENS = 8
MAX_GAP_PP = 2.0
# On a loaded machine (a CI run) one routing decision came out differently and cost a system prompt's 320 tokens
# (3.3 points): the engine-metric scorers see scrapes whose phase in the run follows wall-clock start-up, and at
# model speed (ms per request) scheduling jitter decides which requests are still in flight. So both sides route
# on what they share exactly (prefix, session, their own in-flight counts), and the sim-engines run 4x slower than
# their model; the trace is replayed in model time (arrivals x TIME_SCALE).
TIME_SCALE = 0.25
# The workers start this far apart (wall seconds, about one request's time on the slowed sims). Started together,
# the first requests of one tenant reached an engine in the same instant: whether the second found the first's
# system prompt cached then depended on which engine step each landed in, so wall-clock jitter decided it
# (seen under 2 CPU hogs: 2 of 4 runs lost exactly that prompt, 80.75% vs 84.00%; 0 of 6 once staggered).
STAGGER_S = 0.3
SCRAPE_S = 1.0
ROUTER_PARAMS = {"seed": SEED, "weights": {"queue": 0.0, "kv": 0.0}}


@dataclass
class Turn:
    """One request of the workload, filled in as it is served."""

    tenant: str
    conv: int
    turn: int
    messages: list[dict[str, str]] = field(default_factory=list)
    arrival: float = 0.0
    reply: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0


def _systems(rng: random.Random) -> dict[str, str]:
    # ~300 one-token words each: several 16-token blocks a tenant's conversations share
    return {
        f"agree-t{i}": f"You are tenant {i}'s agent. " + " ".join(rng.choices(WORDS, k=300)) for i in range(TENANTS)
    }


async def _drive(url: str, keys: dict[str, dict[str, str]], systems: dict[str, str]) -> list[Turn]:
    """Closed loop at CONCURRENCY: turn-major, a follow-up only after its previous turn answered (and quoting it)."""
    rng = random.Random(SEED)
    convs = [(tenant, c) for tenant in systems for c in range(CONVERSATIONS)]
    history: dict[tuple[str, int], list[dict[str, str]]] = {}
    jobs: list[tuple[str, int, int]] = []
    for turn in range(TURNS):
        order = list(convs)
        rng.shuffle(order)
        jobs += [(tenant, c, turn) for tenant, c in order]
    done: dict[tuple[str, int], int] = dict.fromkeys(convs, 0)
    served: list[Turn] = []
    cond = asyncio.Condition()
    began = time.monotonic()

    async def worker(http: aiohttp.ClientSession, index: int) -> None:
        await asyncio.sleep(index * STAGGER_S)
        while True:
            async with cond:
                while True:
                    if not jobs:
                        return
                    job = next((j for j in jobs if done[(j[0], j[1])] == j[2]), None)
                    if job is not None:
                        jobs.remove(job)
                        break
                    await cond.wait()
            tenant, c, turn = job
            past = history.setdefault((tenant, c), [{"role": "system", "content": systems[tenant]}])
            t = Turn(tenant, c, turn, [*past, {"role": "user", "content": f"Question {turn} of chat {c}: why?"}])
            t.arrival = time.monotonic() - began
            body = {"model": "smollm2", "messages": t.messages, "max_tokens": MAX_TOKENS, "temperature": 0}
            async with http.post(f"{url}/v1/chat/completions", json=body, headers=keys[tenant]) as resp:
                data = await resp.json()
                assert resp.status == 200, data
            t.reply = data["choices"][0]["message"]["content"]
            t.prompt_tokens = data["usage"]["prompt_tokens"]
            t.cached_tokens = (data["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            served.append(t)
            async with cond:
                history[(tenant, c)] = [*t.messages, {"role": "assistant", "content": t.reply}]
                done[(tenant, c)] += 1
                cond.notify_all()

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(60):
        await asyncio.gather(*(worker(http, i) for i in range(CONCURRENCY)))
    return served


@pytest.fixture(scope="module")
def realtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Turn]]:
    """The workload served by the gateway in front of 3 sim-engines: every request, recorded."""
    tmp = tmp_path_factory.mktemp("agreement")
    systems = _systems(random.Random(SEED))
    sim_args = ("--profile", PROFILE, "--cold-load-s", "0", "--time-scale", str(TIME_SCALE))
    with sim_engines(tmp, REPLICAS, sim_args) as engines:
        config = gateway_config(engines, POLICY, routing={"scrape_interval": SCRAPE_S, "params": ROUTER_PARAMS})
        with gateway(tmp / "gw", config) as url:

            async def run() -> list[Turn]:
                async with aiohttp.ClientSession() as http:
                    keys = {t: await tenant_key(http, url, t) for t in systems}
                return await _drive(url, keys, systems)

            yield asyncio.run(run())


def _offline(trace: Path) -> dict[str, Any]:
    """`fleetgate simulate --trace` with the same profile, fleet size, policy and seed: its report for POLICY."""
    args = [*FLEETGATE, "simulate", "--trace", str(trace), "--profile", PROFILE, "--replicas", str(REPLICAS)]
    args += ["--policies", POLICY, "--seed", str(SEED), "--scrape-interval", str(SCRAPE_S * TIME_SCALE), "--json"]
    args += ["--router-params", json.dumps(ROUTER_PARAMS)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout)["policies"][0]
    return report


def test_realtime_and_offline_cache_hit_ratios_agree(realtime: list[Turn], tmp_path: Path) -> None:
    assert len(realtime) == TENANTS * CONVERSATIONS * TURNS
    trace = tmp_path / "trace.jsonl"
    with trace.open("w") as out:
        for t in sorted(realtime, key=lambda t: t.arrival):
            arrival = t.arrival * TIME_SCALE  # wall time of the slowed sims -> model time
            row = {"arrival": arrival, "tenant": t.tenant, "messages": t.messages, "max_tokens": MAX_TOKENS}
            out.write(json.dumps({**row, "reply": t.reply}) + "\n")
    offline = _offline(trace)
    prompt = sum(t.prompt_tokens for t in realtime)
    live = 100 * sum(t.cached_tokens for t in realtime) / prompt
    replay = 100 * offline["cache_hit_ratio"]
    print(f"cache hit ratio: real-time {live:.2f}%, offline {replay:.2f}% ({prompt} vs {offline['prompt_tokens']})")
    assert offline["prompt_tokens"] == prompt  # the same prompts, tokenized the same way
    assert live > 30  # a workload with something to reuse, or agreement would be trivial
    assert abs(live - replay) <= MAX_GAP_PP, (live, replay)
