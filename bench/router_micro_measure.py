"""What bench/router_micro.py times, in this process: `score` decisions over a filled prefix index, and the index's
real memory under overfill.

Run as a script it is a `harness.worker`: it answers the commands of router_micro.py (`setup`, `round`, `summary`,
`memory`) one JSON line at a time, with whichever fleetgate its PYTHONPATH gives it (`--base-src`).
"""

from __future__ import annotations

import gc
import importlib
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.prefix_index import BLOCK_BYTES, PrefixIndex, PrefixSettings
from fleetgate.routing.request import route_request_from

WORDS = [f"w{i}" for i in range(2000)] + ["the", "a", "of", "to", "and", "order", "refund", "shipping", "account"]
REPLICAS = 64
# Where `make_router` lives, newest first: a worker may run an older checkout (--base-src).
ROUTER_FACTORIES = ("fleetgate.routing.plugins",)


def make_router(name: str, params: dict[str, Any]) -> RoutingPipeline:
    """The routing policy `name` as this checkout builds it."""
    for module in ROUTER_FACTORIES:
        factory = getattr(importlib.import_module(module), "make_router", None)
        if factory is not None:
            router: RoutingPipeline = factory(name, params)
            return router
    raise ImportError(f"no make_router in {', '.join(ROUTER_FACTORIES)}")


@dataclass
class Conversation:
    """One multi-turn chat of a tenant, whose history grows."""

    tenant: str
    session: str
    messages: list[dict[str, str]]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def _replicas(rng: random.Random, n: int) -> list[Replica]:
    now = time.monotonic()
    out = []
    for i in range(n):
        r = Replica(id=f"replica-{i:02d}", url=f"http://127.0.0.1:{20000 + i}", kind="vllm", models={"m"}, healthy=True)
        r.metrics = ReplicaMetrics(
            scraped_at=now, waiting=rng.randint(0, 3), running=rng.randint(0, 8), kv_usage=rng.uniform(0.1, 0.7)
        )
        r.in_flight = rng.randint(0, 4)
        out.append(r)
    return out


class Workload:
    """Seeded conversations: per-tenant system prompts (~1,600 chars), turns of ~300-900 chars."""

    def __init__(self, seed: int, tenants: int = 16) -> None:
        self.rng = random.Random(seed)
        self.systems = {f"tenant-{t}": _words(self.rng, 260) for t in range(tenants)}
        self.conversations: list[Conversation] = []

    def new(self) -> Conversation:
        """A new conversation of a random tenant, with its first turn."""
        tenant = self.rng.choice(list(self.systems))
        conv = Conversation(
            tenant, f"s{len(self.conversations)}", [{"role": "system", "content": self.systems[tenant]}]
        )
        self.conversations.append(conv)
        return self.turn(conv)

    def turn(self, conv: Conversation) -> Conversation:
        """The conversation with one more user turn."""
        if len(conv.messages) > 14:  # keep prompts in a realistic band (~2-10k chars)
            del conv.messages[1:5]
        conv.messages.append({"role": "user", "content": _words(self.rng, self.rng.randint(40, 90))})
        return conv

    def reply(self, conv: Conversation) -> None:
        """The engine's answer to the last turn."""
        conv.messages.append({"role": "assistant", "content": _words(self.rng, self.rng.randint(40, 120))})

    def next(self, new_share: float = 0.2) -> Conversation:
        """The next request: a new conversation (`new_share` of them) or a follow-up of an old one."""
        if not self.conversations or self.rng.random() < new_share:
            return self.new()
        return self.turn(self.rng.choice(self.conversations))


def _payload(conv: Conversation) -> dict[str, Any]:
    return {"model": "m", "messages": conv.messages, "user": conv.session}


def fill(router: RoutingPipeline, work: Workload, reps: list[Replica], blocks: int) -> None:
    """Route conversation turns until the index holds `blocks` blocks (replies appended as a chat would)."""
    while len(router.index) < blocks:
        conv = work.next()
        decision = router.pick(route_request_from(_payload(conv), conv.tenant, conv.session), reps)
        router.finish(decision, ok=True)
        work.reply(conv)
        # What the engine now holds: prompt + reply, recorded as the proxy may do after a turn.
        router.index.record(
            conv.tenant, route_request_from(_payload(conv), conv.tenant).prompt_text or "", decision.replica.id
        )


def time_decisions(router: RoutingPipeline, work: Workload, reps: list[Replica], n: int) -> dict[str, Any]:
    """Time `pick()` over n requests: wall clock and this thread's CPU time (which excludes preemption by other
    processes on a shared machine); request building timed apart."""
    walls: list[int] = []
    cpus: list[int] = []
    builds: list[int] = []
    blocks: list[int] = []
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for _ in range(n):
        conv = work.next()
        t0 = clock()
        req = route_request_from(_payload(conv), conv.tenant, conv.session)
        t1 = clock()
        c1 = cpu()
        decision = router.pick(req, reps)
        c2 = cpu()
        t2 = clock()
        router.finish(decision, ok=True)
        work.reply(conv)
        builds.append(t1 - t0)
        walls.append(t2 - t1)
        cpus.append(c2 - c1)
        blocks.append(len(req.prompt_text or "") // router.index.settings.block_chars)
    return {"wall": _pcts(walls), "cpu": _pcts(cpus), "build": _pcts(builds), "blocks": statistics.mean(blocks)}


def _pcts(ns: list[int]) -> dict[str, float]:
    q = statistics.quantiles(ns, n=1000)
    return {"p50": q[499] / 1e3, "p90": q[899] / 1e3, "p99": q[989] / 1e3, "p999": q[998] / 1e3, "max": max(ns) / 1e3}


def _median_of(rounds: list[dict[str, Any]], kind: str) -> dict[str, float]:
    return {k: statistics.median(r[kind][k] for r in rounds) for k in rounds[0][kind]}


class DecisionRun:
    """One index size: a `score` router over 64 replicas whose index is filled to `blocks`, timed round by round."""

    def __init__(self, blocks: int, block_chars: int, seed: int) -> None:
        rng = random.Random(seed)
        self.reps = _replicas(rng, REPLICAS)
        self.router = make_router("score", {"seed": seed, "stale_after": 3600, "prefix": {"block_chars": block_chars}})
        self.work = Workload(seed)
        self.block_chars = block_chars
        fill(self.router, self.work, self.reps, blocks)
        self.index_blocks = len(self.router.index)
        self.index_mb = self.router.index.bytes_used / 2**20
        self.router.stats.timings.clear()
        self.rounds: list[dict[str, Any]] = []
        self.decisions = 0

    def round(self, n: int) -> dict[str, Any]:
        """Time n more decisions; their percentiles."""
        result = time_decisions(self.router, self.work, self.reps, n)
        self.rounds.append(result)
        self.decisions += n
        return result

    def summary(self) -> dict[str, Any]:
        """The run's row: each percentile is the median over the rounds."""
        rounds = self.rounds
        return {
            "index_blocks": self.index_blocks,
            "index_mb": self.index_mb,
            "block_chars": self.block_chars,
            "n": self.decisions,
            "rounds": len(rounds),
            "blocks": statistics.mean(r["blocks"] for r in rounds),
            "wall": _median_of(rounds, "wall"),
            "cpu": _median_of(rounds, "cpu"),
            "build": _median_of(rounds, "build"),
            "wall_p99_rounds": [r["wall"]["p99"] for r in rounds],
        }

    def plugins(self) -> dict[str, Any]:
        """Mean µs per call of each plugin over the timed decisions."""
        snapshot = self.router.stats.snapshot()["plugins"]
        assert isinstance(snapshot, dict)
        return snapshot


def memory_run(budget_mb: int, factor: int, seed: int) -> dict[str, Any]:
    """Feed `factor` x more distinct blocks than fit; tracemalloc the index."""
    budget = budget_mb * 2**20
    fits = budget // BLOCK_BYTES
    rng = random.Random(seed)
    replica_ids = [f"replica-{i:02d}" for i in range(REPLICAS)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index = PrefixIndex(PrefixSettings(budget_bytes=budget))
    fed = 0
    peak_real = 0
    started = time.perf_counter()
    prompt_no = 0
    while fed < factor * fits:
        prompt_no += 1
        text = f"{prompt_no:>12} " + _words(rng, 300)  # ~1,900 chars: ~29 distinct blocks
        hashes = index.hashes(f"tenant-{prompt_no % 16}", text)
        index.record_hashes(hashes, replica_ids[prompt_no % REPLICAS])
        fed += len(hashes)
        if prompt_no % 2000 == 0:
            peak_real = max(peak_real, tracemalloc.get_traced_memory()[0] - base)
    gc.collect()
    real = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "budget_mb": budget_mb,
        "fits_blocks": fits,
        "fed_blocks": fed,
        "kept_blocks": len(index),
        "evicted": index.evicted,
        "accounted_mb": index.bytes_used / 2**20,
        "real_mb": real / 2**20,
        "peak_real_mb": max(peak_real, real) / 2**20,
        "seconds": time.perf_counter() - started,
    }


class Session:
    """The worker's side of router_micro.py's interleaved runs: one DecisionRun at a time."""

    def __init__(self) -> None:
        self.run: DecisionRun | None = None

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """`source` (which fleetgate runs here), `setup`, `round`, `summary` (with the plugins' timings), `memory`."""
        op = command["op"]
        if op == "source":
            import fleetgate

            return {"fleetgate": str(Path(fleetgate.__file__).parent)}
        if op == "setup":
            self.run = DecisionRun(command["blocks"], command["block_chars"], command["seed"])
            return {"index_blocks": self.run.index_blocks, "index_mb": self.run.index_mb}
        if op == "memory":
            return memory_run(command["budget_mb"], command["factor"], command["seed"])
        assert self.run is not None, "setup first"
        if op == "round":
            return self.run.round(command["n"])
        if op == "summary":
            return {"run": self.run.summary(), "plugins": self.run.plugins()}
        raise ValueError(f"unknown command {op!r}")


if __name__ == "__main__":
    from harness.worker import serve

    sys.exit(serve(Session().handle))
