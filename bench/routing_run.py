"""One run of bench/routing.py: fresh replicas, a router in front of them, the workload through it, and the best
any router could have done on what was served."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.markup import escape

import routing_sim
import routing_workload as wl
from harness import rest
from harness.chat import chat_headers, stream_chat
from harness.engines import start_llama_replicas
from harness.gateway import create_key, put_tenant, start_gateway, wait_keys
from harness.keys import ADMIN_KEY
from harness.peers import start_peer
from harness.procs import Child, Children, StartError
from harness.usage import snapshot

MODEL = "smollm2"


@dataclass(frozen=True)
class Target:
    """A router configuration: `fleetgate` with one of its policies, or a peer with one of its policies."""

    router: str  # fleetgate | sglang-router | vllm-router
    policy: str

    @property
    def label(self) -> str:
        """`score`, `sglang-router cache_aware`, ..."""
        return self.policy if self.router == "fleetgate" else f"{self.router} {self.policy}"

    @property
    def key(self) -> str:
        """`fleetgate:score`: the command-line and JSON name."""
        return f"{self.router}:{self.policy}"


ALL_TARGETS = (
    Target("fleetgate", "round_robin"),
    Target("fleetgate", "score"),
    Target("sglang-router", "cache_aware"),
    Target("fleetgate", "least_load"),
    Target("fleetgate", "prefix"),
    Target("sglang-router", "round_robin"),
    Target("vllm-router", "cache_aware"),
)
TARGETS_BY_KEY = {t.key: t for t in ALL_TARGETS}


@dataclass
class Settings:
    """What one run does, from the command line."""

    tenants: int
    conversations: int  # per tenant
    turns: int
    concurrency: int
    system_words: int
    user_words: int
    max_tokens: int
    seed: int
    workloads: list[str]
    shared_targets: list[str]
    shared_repeats: int
    unique_targets: list[str]
    unique_repeats: int
    json_path: Path | None
    docs_path: Path | None
    keep_logs: bool
    quick: bool
    command: str
    plot_from: Path | None = None
    report_from: Path | None = None
    sim: str | None = None  # a sim-engine profile: simulated replicas instead of llama-server (calibration)


@dataclass
class Result:
    """One request as the client saw it."""

    conv: int
    turn: int
    tenant: str
    messages: list[dict[str, str]]
    started: float = 0.0
    ttft: float | None = None
    e2e: float | None = None
    finished: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reply: str = ""
    replica: str = ""
    route: str = ""
    error: str = ""
    attempts: int = 0
    seq: int = 0  # dispatch order
    best: int = 0  # filled in after the run
    best_timed: int = 0  # the same, counting only requests finished when this one was sent
    best_no_history: int = 0  # the same, without the request's own conversation (system prompt only)


@dataclass
class RunResult:
    """One (workload, target) run."""

    workload: str
    target: str
    label: str
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    note: str = ""  # why n/a
    loadavg_start: tuple[float, ...] = ()
    other_cpu: float | None = None  # other processes' CPU during the run, as a share of one core
    engine_cpu: float | None = None  # both replicas' CPU during the run, share of one core
    router_cpu: float | None = None
    replica_tokens: list[int] = field(default_factory=list)  # prompt tokens (new + cached) per replica
    tokenize_mismatch: int = 0
    peer_version: str = ""
    decisions: int | None = None  # fleetgate: routing decisions (one per attempt), from its /metrics
    # The oracle bound (first `shared` run only): each request alone on an idle replica with its prefix cached.
    oracle: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- client


def _take(r: Result, usage: dict[str, Any], reply: str) -> None:
    """The usage and the reply of a finished request."""
    r.e2e = r.finished - r.started
    r.reply = reply
    r.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    r.completion_tokens = int(usage.get("completion_tokens") or 0)
    r.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    r.error = ""


async def one_request(
    session: aiohttp.ClientSession,
    base: str,
    key: str | None,
    r: Result,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Send `r` streamed (with `extra` body fields), up to 3 attempts; fill in TTFT (first content chunk),
    end-to-end time, usage and the reply."""
    body = {
        "model": MODEL,
        "messages": r.messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    for attempt in range(3):
        r.attempts = attempt + 1
        r.started = time.monotonic()
        r.ttft = None
        try:
            reply = await stream_chat(session, base, body, chat_headers(key))
            r.finished = time.monotonic()
            r.replica = reply.headers.get("x-fleetgate-replica", "")
            r.route = reply.headers.get("x-fleetgate-route", "")
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {reply.error_body[:200]!r}")
            if reply.usage is None:
                raise RuntimeError("the stream carried no usage chunk")
            _take(r, reply.usage, reply.text)
            # An empty reply: its first token is the end of the stream.
            r.ttft = reply.ttft if reply.ttft is not None else r.e2e
            return
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
            r.error = f"{type(exc).__name__}: {exc}"[:200]
            r.finished = time.monotonic()
            await asyncio.sleep(0.2)
    r.ttft = r.e2e = None


async def drive(work: wl.Workload, base: str, keys: dict[str, str], s: Settings) -> tuple[list[Result], float]:
    """Run the workload at a fixed concurrency: workers take the first job (turn-major order) whose previous
    turn is answered. Returns the results in job order and the wall time."""
    replies: dict[int, list[str]] = {c.index: [] for c in work.conversations}
    done_turns: dict[int, int] = {c.index: 0 for c in work.conversations}
    pending = list(work.jobs)
    results: dict[tuple[int, int], Result] = {}
    cond = asyncio.Condition()
    timeout = aiohttp.ClientTimeout(total=600, sock_read=300)
    connector = aiohttp.TCPConnector(limit=s.concurrency * 2)

    async def next_job() -> wl.Job | None:
        async with cond:
            while pending:
                job = next((j for j in pending if done_turns[j.conv] == j.turn), None)
                if job is not None:
                    pending.remove(job)
                    return job
                await cond.wait()
        return None

    async def worker(session: aiohttp.ClientSession) -> None:
        while (job := await next_job()) is not None:
            conv = work.conversations[job.conv]
            r = Result(job.conv, job.turn, conv.tenant, work.messages(job, replies[job.conv]), seq=len(results))
            results[(job.conv, job.turn)] = r
            await one_request(session, base, keys.get(conv.tenant), r, s.max_tokens)
            async with cond:
                # A failed turn still moves its conversation on (with an empty reply), so the run ends.
                replies[job.conv].append(r.reply)
                done_turns[job.conv] += 1
                cond.notify_all()

    began = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(s.concurrency)))
    wall = time.monotonic() - began
    return [results[(j.conv, j.turn)] for j in work.jobs], wall


# ------------------------------------------------------------------------------------------ best possible, oracle


def tokenize_llamacpp(engine: str, messages: list[dict[str, str]], reply: str) -> tuple[tuple[int, ...], ...]:
    """The rendered prompt's and the reply's token ids, from llama-server's /apply-template and /tokenize."""
    prompt = rest.post_json(f"{engine}/apply-template", {"messages": messages})["prompt"]
    tokens = rest.post_json(f"{engine}/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
    answer = rest.post_json(f"{engine}/tokenize", {"content": reply, "add_special": False})
    return tuple(tokens["tokens"]), tuple(answer["tokens"])


def fill_best(results: list[Result], engine: str, sim: bool = False) -> int:
    """Tokenize every prompt and reply on a replica and store each request's best cached count; return how many
    prompts tokenized to a different length than the engine reported."""
    served: list[wl.Served] = []
    mismatch = 0
    tokenize = routing_sim.tokenize if sim else tokenize_llamacpp
    for r in results:
        tokens, reply = tokenize(engine, r.messages, r.reply)
        if r.prompt_tokens and len(tokens) != r.prompt_tokens:
            mismatch += 1
        served.append(wl.Served(tokens, reply, r.completion_tokens, r.seq, r.started, r.finished, r.conv))
    bests = zip(
        wl.best_cached(served),
        wl.best_cached(served, timed=True),
        wl.best_cached(served, no_history=True),
        strict=True,
    )
    for r, (best, timed, no_history) in zip(results, bests, strict=True):
        r.best, r.best_timed, r.best_no_history = best, timed, no_history
    return mismatch


async def oracle_ttfts(engine: str, results: list[Result], max_tokens: int) -> list[dict[str, float]]:
    """The best TTFT each request could have had: sent alone to an idle replica right after exactly its best
    possible prefix (the tokens an earlier request of the run left that it could reuse) was put in that slot.

    No router can beat it: a real run adds queueing and co-batched prefills, and caches at most this much. One
    slot (`id_slot` 0) of one replica, requests in order, the prefix loaded with a 1-token `/completion`."""
    out: list[dict[str, float]] = []
    # llama-server closes the connection after each stream: a fresh connection per request.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        for r in results:
            if r.error:
                continue
            tokens, _ = await asyncio.to_thread(tokenize_llamacpp, engine, r.messages, r.reply)
            warm = {"prompt": list(tokens[: r.best]) or [tokens[0]], "n_predict": 1, "id_slot": 0, "cache_prompt": True}
            async with session.post(f"{engine}/completion", json=warm) as resp:
                await resp.read()
            timed = replace(r)
            await one_request(session, engine, None, timed, max_tokens, extra={"id_slot": 0, "cache_prompt": True})
            if timed.ttft is None:
                raise RuntimeError(f"oracle request failed: {timed.error}")
            out.append(
                {
                    "ttft": timed.ttft,
                    "prompt": timed.prompt_tokens,
                    "cached": timed.cached_tokens,
                    "best": r.best,
                    "turn": r.turn,
                    "conv": r.conv,
                }
            )
    return out


def route_decisions(gateway_url: str) -> int | None:
    """How many routing decisions the gateway made (a retry after a failed attempt is one more)."""
    text = rest.metrics_text(f"{gateway_url}/metrics", key=ADMIN_KEY)  # /metrics needs the admin key
    found = rest.samples(text, "fleetgate_route_decisions_total") if text is not None else []
    return int(sum(v for _, v in found)) if found else None


def replica_prompt_tokens(url: str) -> int:
    """Prompt tokens a replica saw (new + cached), from its /metrics."""
    text = rest.metrics_text(f"{url}/metrics")
    if text is None:
        return -1
    names = ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")
    return int(sum(rest.total(text, name) for name in names))


# ---------------------------------------------------------------------------------------------------------- runs


@dataclass
class Bed:
    """What one run needs besides its settings: where logs go, the llama-server build and model, the peers."""

    workdir: Path
    binary: Path | None
    model: Path | None
    peers: dict[str, Any]  # name -> (python, version), or why it is not there
    console: Console


def start_replicas(s: Settings, bed: Bed, tag: str) -> list[tuple[Child, str]]:
    """Two fresh replicas: sim-engines with `--sim`, else llama-server with the arguments `fleetgate up` uses."""
    if s.sim is not None:
        return routing_sim.start_sim_replicas(bed.workdir, s.sim, tag)
    from fleetgate.config import LocalFleetConfig

    assert bed.binary is not None and bed.model is not None
    config = LocalFleetConfig(replicas=2, parallel=2, ctx_size=8192, threads=1)
    return start_llama_replicas(bed.workdir, bed.binary, bed.model, tag, config)


def start_router(
    s: Settings, bed: Bed, target: Target, urls: list[str], tag: str, tenants: tuple[str, ...]
) -> tuple[Child, str, dict[str, str]]:
    """The router in front of the replicas: its process, URL and the tenants' keys (fleetgate only)."""
    if target.router == "fleetgate":
        settings = {"FLEETGATE_ROUTING__POLICY": target.policy, "FLEETGATE_ROUTING__PARAMS__SEED": str(s.seed)}
        gateway = start_gateway(bed.workdir, f"{tag}-router", urls, settings, timeout=90, healthy=len(urls))
        try:
            keys = {}
            for t in tenants:  # one tenant and key per workload tenant: the prefix index is namespaced by tenant
                put_tenant(gateway.url, t, {"name": t, "models": ["*"]})
                keys[t] = create_key(gateway.url, t, "bench")
            wait_keys(gateway.url, keys, MODEL)
        except BaseException:
            gateway.child.stop()
            raise
        return gateway.child, gateway.url, keys
    python, _ = bed.peers[target.router]
    child, port = start_peer(bed.workdir, python, target.router, target.policy, urls, tag, target.label)
    return child, f"http://127.0.0.1:{port}", {}


def _cpu(engine_pids: list[int], router_pid: int) -> dict[str, float]:
    seen = snapshot({f"e{i}": pid for i, pid in enumerate(engine_pids)} | {"router": router_pid})
    engines = sum(seen[f"e{i}"] for i in range(len(engine_pids)))
    return {"engines": engines, "router": seen["router"], "client": seen["client"], "machine": seen["machine"]}


def measure(s: Settings, run: RunResult, work: wl.Workload, url: str, keys: dict[str, str], pids: list[int]) -> None:
    """Drive the workload through the router at `url`; the CPU of the replicas (`pids[:-1]`) and the router."""
    time.sleep(1.5)  # one scrape interval: every router starts from fresh engine metrics
    cpu0 = _cpu(pids[:-1], pids[-1])
    run.results, run.wall = asyncio.run(drive(work, url, keys, s))
    cpu1 = _cpu(pids[:-1], pids[-1])
    spent = {k: cpu1[k] - cpu0[k] for k in cpu0}
    ours = spent["engines"] + spent["router"] + spent["client"]
    run.other_cpu = max(0.0, spent["machine"] - ours) / run.wall if run.wall else None
    run.engine_cpu = spent["engines"] / run.wall if run.wall else None
    run.router_cpu = spent["router"] / run.wall if run.wall else None


def run_one(s: Settings, bed: Bed, work: wl.Workload, target: Target, oracle: bool = False) -> RunResult:
    """Fresh replicas, the router, the workload, the best-possible numbers; everything stopped by PID after."""
    run = RunResult(work.name, target.key, target.label, loadavg_start=os.getloadavg())
    if target.router != "fleetgate":
        peer = bed.peers.get(target.router)
        if not isinstance(peer, tuple):
            run.note = peer if isinstance(peer, str) else "not installed"
            return run
        run.peer_version = peer[1]
    tag = f"{work.name}-{target.key.replace(':', '-')}"
    with Children() as children:
        replicas = start_replicas(s, bed, tag)
        for child, _ in replicas:
            children.add(child)
        urls = [u for _, u in replicas]
        try:
            router, url, keys = start_router(s, bed, target, urls, tag, work.tenants)
        except (StartError, RuntimeError, OSError) as exc:
            run.note = f"could not be started: {str(exc).splitlines()[0][:200]}"
            bed.console.print(f"[yellow]{escape(target.label)}: {escape(run.note)}[/]")
            return run
        children.add(router)
        measure(s, run, work, url, keys, [*(c.pid for c, _ in replicas), router.pid])
        count_tokens = routing_sim.replica_prompt_tokens if s.sim is not None else replica_prompt_tokens
        run.replica_tokens = [count_tokens(u) for u in urls]
        if target.router == "fleetgate":
            run.decisions = route_decisions(url)
        run.tokenize_mismatch = fill_best(run.results, urls[0], sim=s.sim is not None)
        if oracle and s.sim is None:
            run.oracle = asyncio.run(oracle_ttfts(urls[0], run.results, s.max_tokens))
    return run


def dump_requests(groups: dict[tuple[str, str], list[RunResult]]) -> dict[str, Any]:
    """Every request of every run without its messages, for the JSON result."""
    return {
        f"{key[0]}/{key[1]}": [
            [{k: v for k, v in asdict(x).items() if k != "messages"} for x in run.results] for run in g
        ]
        for key, g in groups.items()
    }
