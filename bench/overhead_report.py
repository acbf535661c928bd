"""bench/overhead.py's numbers: medians over rounds, the goals, the comparisons, and the report and docs section."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness import fake_engine
from harness.figures import overhead_figure
from harness.loadgen import CellResult
from harness.plots import Plot
from harness.report import (
    Verdict,
    markdown_table,
    print_table,
    print_verdicts,
    section_head,
    settings_dict,
)
from harness.stats import all_ok, diff, fmt, median, ratio
from overhead_targets import BASE_MODE, DEMO_LIMITS, GATEWAY_MODES, ROLE_OF, TARGET_ORDER, limits_text

SECTION = "## Gateway overhead (bench/overhead.py)"
# The client never asks for usage, so every proxy must hand it exactly the engine's content and finish chunks.
EXPECTED_CHUNKS = fake_engine.EXPECTED_EVENTS
PLOT = Plot(
    "overhead",
    overhead_figure,
    SECTION,
    "Gateway overhead: req/s, p50 and p99 latency per target, mode and concurrency",
)

# The goals this benchmark checks (see the verdict lines in the report).
MAX_ADDED_P50_MS = 1.0
MIN_RATE_VS_DIRECT = 0.60
MIN_RATE_VS_LITELLM = 10.0
MAX_CPU_MS_PER_CHUNK = 0.05

Key = tuple[str, int, bool]  # (target, concurrency, stream)
Medians = dict[Key, dict[str, Any]]


@dataclass
class Settings:
    """What one run does, from the command line."""

    duration: float
    warmup: float
    rounds: int
    concurrency: list[int]
    modes: list[str]
    redis_url: str
    litellm: bool
    litellm_venv: Path
    burst: bool
    json_path: Path | None
    docs_path: Path | None
    keep_logs: bool
    command: str
    plot_from: Path | None = None
    base_src: Path | None = None  # a checkout whose src/ runs as BASE_MODE


@dataclass
class Run:
    """Everything measured, plus the facts the report needs."""

    settings: Settings
    meta: dict[str, Any]
    cells: list[CellResult] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # target -> why it shows n/a
    checks: dict[str, str] = field(default_factory=dict)  # gateway mode -> how its limits were shown to work


def background_cpu(cell: CellResult) -> float:
    """CPU seconds the machine spent on processes other than ours during the cell (noise from other work)."""
    ours = sum(v for k, v in cell.cpu.items() if "." not in k and k != "machine")
    return max(0.0, cell.cpu.get("machine", ours) - ours)


def _per(cells: list[CellResult], role: str, unit: Callable[[CellResult], int]) -> float | None:
    """The median over rounds of `role`'s CPU ms per unit (request, chunk)."""
    return median(c.cpu.get(role, 0.0) / unit(c) * 1e3 if unit(c) else None for c in cells)


def _medians(cells: list[CellResult], role: str, stream: bool) -> dict[str, Any]:
    sums = [c.summary() for c in cells]
    return {
        "rounds": len(cells),
        "rps": median(x["rps"] for x in sums),
        "p50_ms": median(x["p50_ms"] for x in sums),
        "p99_ms": median(x["p99_ms"] for x in sums),
        "ttfb_p50_ms": median(x["ttfb_p50_ms"] for x in sums),
        "cpu_ms_per_req": _per(cells, role, lambda c: c.requests),
        "cpu_ms_per_chunk": _per(cells, role, lambda c: c.chunks) if stream else None,
        "client_cpu_share": median(c.cpu.get("client", 0.0) / c.elapsed for c in cells),
        "server_sys_fraction": median(c.cpu[f"{role}.sys"] / c.cpu[role] if c.cpu.get(role) else None for c in cells),
        "other_cpu_share": median(background_cpu(c) / c.elapsed for c in cells),
        "engine_cpu_share": median(c.cpu.get("engine", 0.0) / c.elapsed for c in cells),
        # The Redis server's CPU while this target ran (it is not in the gateway's process tree).
        "redis_cpu_ms_per_req": median(
            c.cpu["redis"] / c.requests * 1e3 if c.requests and "redis" in c.cpu else None for c in cells
        ),
        "requests": sum(c.requests for c in cells),
        "errors": sum(c.errors for c in cells),
        "upstream_conns_opened": sum(c.upstream_conns or 0 for c in cells),
    }


def aggregate(run: Run) -> Medians:
    """Medians across rounds for each (target, concurrency, stream) cell, plus per-request and per-chunk CPU."""
    groups: dict[Key, list[CellResult]] = {}
    for cell in run.cells:
        groups.setdefault((cell.target, cell.concurrency, cell.stream), []).append(cell)
    return {key: _medians(cells, ROLE_OF[key[0]], key[2]) for key, cells in groups.items()}


def _getter(agg: Medians) -> Callable[[str, int, bool, str], float | None]:
    def get(target: str, c: int, stream: bool, metric: str) -> float | None:
        row = agg.get((target, c, stream))
        return None if row is None else row.get(metric)

    return get


def _ms(v: float | None, spec: str) -> str:
    return fmt(v, spec)


def _pct(v: float | None) -> str:
    return fmt(v, ".0%")


def _times(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}x"


def verdicts(agg: Medians, s: Settings, notes: dict[str, str]) -> list[Verdict]:
    """Check the measured medians of every gateway mode against the goals."""
    return [v for mode in s.modes for v in _mode_verdicts(agg, s, notes, mode)]


def _mode_verdicts(agg: Medians, s: Settings, notes: dict[str, str], mode: str) -> list[Verdict]:
    """The four goals for one gateway mode (`fleetgate`, `fleetgate-redis`)."""
    lo, hi = min(s.concurrency), max(s.concurrency)
    get = _getter(agg)
    why = f" ({mode} n/a: {notes[mode]})" if mode in notes else ""
    added = {m: diff(get(mode, lo, m, "p50_ms"), get("direct", lo, m, "p50_ms")) for m in (False, True)}
    share = {m: ratio(get(mode, hi, m, "rps"), get("direct", hi, m, "rps")) for m in (False, True)}
    client = max((get("direct", hi, m, "client_cpu_share") or 0.0) for m in (False, True))
    vs = {m: ratio(get(mode, hi, m, "rps"), get("litellm", hi, m, "rps")) for m in (False, True)}
    per_chunk = get(mode, hi, True, "cpu_ms_per_chunk")
    per_chunk_lo = get(mode, lo, True, "cpu_ms_per_chunk")
    return [
        Verdict(
            f"{mode}: added p50 <= {MAX_ADDED_P50_MS:g} ms at c={lo}",
            f"{_ms(added[False], '+.2f')} ms non-stream, "
            f"{_ms(added[True], '+.2f')} ms stream (to the end of the stream){why}",
            all_ok(v <= MAX_ADDED_P50_MS if v is not None else None for v in added.values()),
        ),
        Verdict(
            f"{mode}: rate through the gateway >= {MIN_RATE_VS_DIRECT:.0%} of direct at c={hi}",
            f"{_pct(share[False])} non-stream, {_pct(share[True])} stream"
            # Then "direct" measures the load generator's ceiling, not the engine's: say so next to the ratio.
            + (f" (direct is bound by the load generator: up to {client:.0%} of a core)" if client >= 0.8 else "")
            + why,
            all_ok(v >= MIN_RATE_VS_DIRECT if v is not None else None for v in share.values()),
        ),
        Verdict(
            f"{mode}: rate >= {MIN_RATE_VS_LITELLM:g}x LiteLLM's at c={hi}",
            f"{_times(vs[False])} non-stream, {_times(vs[True])} stream"
            + (f" (LiteLLM n/a: {notes['litellm']})" if "litellm" in notes else "")
            + why,
            all_ok(v >= MIN_RATE_VS_LITELLM if v is not None else None for v in vs.values()),
        ),
        Verdict(
            f"{mode}: gateway CPU <= {MAX_CPU_MS_PER_CHUNK:g} ms per streamed chunk (c={hi})",
            f"{_ms(per_chunk, '.3f')} ms at c={hi} ({_ms(per_chunk_lo, '.3f')} ms at c={lo}){why}",
            None if per_chunk is None else per_chunk <= MAX_CPU_MS_PER_CHUNK,
        ),
    ]


def redis_comparison(agg: Medians, s: Settings) -> list[str]:
    """What the Redis back end costs over in-process limits, from the same cells (empty unless both ran)."""
    get = _getter(agg)
    lo, hi = min(s.concurrency), max(s.concurrency)
    if not all(get(m, lo, False, "p50_ms") is not None for m in GATEWAY_MODES):
        return []
    lines = []
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        p50 = diff(get("fleetgate-redis", lo, stream, "p50_ms"), get("fleetgate", lo, stream, "p50_ms"))
        rate = ratio(get("fleetgate-redis", hi, stream, "rps"), get("fleetgate", hi, stream, "rps"))
        cpu = diff(get("fleetgate-redis", hi, stream, "cpu_ms_per_req"), get("fleetgate", hi, stream, "cpu_ms_per_req"))
        redis_cpu = get("fleetgate-redis", hi, stream, "redis_cpu_ms_per_req")
        lines.append(
            f"Redis limits vs in-process, {mode}: p50 {_ms(p50, '+.2f')} ms at c={lo}; rate {_pct(rate)} of "
            f"in-process at c={hi}; gateway CPU {_ms(cpu, '+.3f')} ms/req, plus {_ms(redis_cpu, '.3f')} ms/req "
            f"in the Redis server (c={hi})"
        )
    return lines


def base_comparison(agg: Medians, s: Settings) -> list[str]:
    """This checkout against --base-src, from the same interleaved cells (empty without a base)."""
    if BASE_MODE not in s.modes:
        return []
    get = _getter(agg)
    lo, hi = min(s.concurrency), max(s.concurrency)
    lines = []
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        p50 = diff(get("fleetgate", lo, stream, "p50_ms"), get(BASE_MODE, lo, stream, "p50_ms"))
        rate = ratio(get("fleetgate", hi, stream, "rps"), get(BASE_MODE, hi, stream, "rps"))
        cpu = diff(get("fleetgate", hi, stream, "cpu_ms_per_req"), get(BASE_MODE, hi, stream, "cpu_ms_per_req"))
        lines.append(
            f"This checkout vs {BASE_MODE}, {mode}: p50 {_ms(p50, '+.3f')} ms at c={lo}; rate {_pct(rate)} of the"
            f" base's at c={hi}; CPU {_ms(cpu, '+.3f')} ms/req at c={hi}"
        )
    return lines


def floor_comparison(agg: Medians, s: Settings) -> list[str]:
    """What a bare Python metering proxy reaches, and what fleetgate's features cost on top of it."""
    get = _getter(agg)
    hi = max(s.concurrency)
    lines = []
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        floor_share = ratio(get("floor", hi, stream, "rps"), get("direct", hi, stream, "rps"))
        floor_cpu = get("floor", hi, stream, "cpu_ms_per_req")
        parts = [
            f"Floor, {mode}: a bare Python metering proxy reaches {_pct(floor_share)} of direct at c={hi} with "
            f"{_ms(floor_cpu, '.3f')} ms CPU per request"
        ]
        for m in s.modes:
            share = ratio(get(m, hi, stream, "rps"), get("floor", hi, stream, "rps"))
            extra = diff(get(m, hi, stream, "cpu_ms_per_req"), floor_cpu)
            parts.append(f"{m} reaches {_pct(share)} of the floor's rate, its features cost {_ms(extra, '+.3f')} ms")
        lines.append("; ".join(parts))
    return lines


COLUMNS = (
    "target",
    "mode",
    "c",
    "req/s",
    "p50 ms",
    "p99 ms",
    "TTFB p50 ms",
    "CPU ms/req",
    "CPU ms/chunk",
    "client CPU",
    "other CPU",
    "errors",
)
LEFT = ("target", "mode")
CELLS = (  # (median, format) of the numeric columns after `c`
    ("rps", ".0f"),
    ("p50_ms", ".2f"),
    ("p99_ms", ".2f"),
    ("ttfb_p50_ms", ".2f"),
    ("cpu_ms_per_req", ".3f"),
    ("cpu_ms_per_chunk", ".4f"),
    ("client_cpu_share", ".0%"),
    ("other_cpu_share", ".0%"),
)


def table_rows(agg: Medians, s: Settings, notes: dict[str, str]) -> list[tuple[str, ...]]:
    """One row per target and cell; a target that could not run shows n/a (with the reason in the notes)."""
    wanted = {"direct", "floor", *s.modes, *(["litellm"] if s.litellm else [])}
    rows: list[tuple[str, ...]] = []
    for c in s.concurrency:
        for stream in (False, True):
            for name in TARGET_ORDER:
                row = agg.get((name, c, stream))
                head = (f"{name} (engine CPU)" if name == "direct" else name, "stream" if stream else "non-stream")
                if row is not None:
                    values = tuple(fmt(row[k], spec, "-") for k, spec in CELLS)
                    rows.append((*head, str(c), *values, str(row["errors"])))
                elif name in wanted or name in notes:
                    rows.append((*head, str(c), "n/a", *("-",) * (len(COLUMNS) - 4)))
    return rows


def comparisons(agg: Medians, s: Settings) -> list[str]:
    """Every comparison line this run allows (Redis, floor, base)."""
    return [*redis_comparison(agg, s), *floor_comparison(agg, s), *base_comparison(agg, s)]


def print_report(console: Console, run: Run, agg: Medians, checks: list[Verdict]) -> None:
    """The Rich table, the notes and the verdicts."""
    rows = table_rows(agg, run.settings, run.notes)
    print_table(console, "Gateway overhead (medians over rounds)", COLUMNS, rows, LEFT)
    for name, why in run.notes.items():
        console.print(f"{name}: n/a ({escape(why)})")
    for line in comparisons(agg, run.settings):
        console.print(escape(line))
    print_verdicts(console, checks)


def setup_text(run: Run) -> str:
    """The section's Setup paragraph."""
    s, m = run.settings, run.meta
    gateways = " and ".join(f"`{mode}`" for mode in s.modes)
    litellm = (
        f" and through LiteLLM proxy {m.get('litellm_version', '?')} (`litellm[proxy]` from PyPI, its default "
        "single uvicorn process, no database, access log off)"
        if s.litellm
        else ""
    )
    redis = f", Redis {m['redis_version']}" if m.get("redis_version") else ""
    return (
        "Setup: a fake OpenAI engine (raw asyncio on uvloop, precomputed answers; a stream is "
        f"{fake_engine.CONTENT_CHUNKS} content chunks + a finish chunk + a usage chunk when asked + `[DONE]`, "
        + ("all in one write" if s.burst else "one write per event, no delay")
        + "), reached directly, through `floor` (bench/harness/floor_proxy.py: the least a Python metering proxy "
        "does per request on uvloop: httptools both ways, the JSON body parsed and re-serialised, usage forced on "
        "and taken from the answer, a pooled keep-alive engine connection, a start and a finish line appended to "
        f"an outbox file; none of fleetgate's features), through `fleetgate up --engine ...` as {gateways}{litellm}"
        ". Each gateway runs from defaults with its own fresh `FLEETGATE_STATE_DIR` (new SQLite database and "
        "outbox); `fleetgate` decides limits in-process (`limits.backend: memory`), `fleetgate-redis` in Redis "
        f"(`FLEETGATE_LIMITS__BACKEND=redis`, `{s.redis_url}`{redis}, with `on_redis_error: fail_closed` so a "
        "Redis problem would show as errors rather than as in-process numbers under the Redis label). Before "
        "measuring, the benchmark gives the demo tenant limits through "
        f'`PUT /admin/tenants/demo` (`models: ["*"]`, {limits_text(DEMO_LIMITS)}) and shows each gateway '
        "enforces them: with rpm 1 a request is refused with HTTP 429, with the high limits requests pass again. "
        "The fake model gets a price (0.10 / 0.20 per 1M input / output tokens), so every request also moves the "
        "budget counter. "
        f"A closed-loop aiohttp client in one process; the targets run back to back in each cell "
        f"({s.warmup:g} s warm-up, {s.duration:g} s measured), {s.rounds} round(s), medians shown. "
        "Client, engine and proxy share the same CPUs, so rates are relative, not absolute capacity. "
        "Latency is to the last byte (end of stream); TTFB is to the first body byte. "
        "CPU is utime+stime from /proc of the proxy's process tree (of the fake engine for `direct`) over the cell, "
        f"divided by requests and by chunks received ({EXPECTED_CHUNKS} per stream); for `fleetgate-redis` it does "
        "not include the Redis server (shown below the table). "
        "Client CPU is what the load generator used, other CPU what the rest of the machine used meanwhile "
        "(busy time from /proc/stat minus ours), both as a share of one core."
    )


def markdown_section(run: Run, agg: Medians, checks: list[Verdict]) -> str:
    """The docs section: setup, machine, command, table, verdicts."""
    s = run.settings
    lines = section_head(SECTION, run.meta, s.command, setup_text(run))
    lines += markdown_table(COLUMNS, table_rows(agg, s, run.notes), LEFT)
    lines.append("")
    noise = max((row["other_cpu_share"] or 0.0) for row in agg.values()) if agg else 0.0
    if noise >= 0.25:
        lines += [
            f"Other processes used up to {noise:.0%} of a core during some cells (see `other CPU`); "
            "the targets were interleaved so that load hit all of them, but absolute numbers are noisier.",
            "",
        ]
    for name, why in run.notes.items():
        lines += [f"{name}: n/a ({why}).", ""]
    for mode, shown in run.checks.items():
        lines += [f"{mode} limits: {shown}.", ""]
    lines += [f"{line}.\n" for line in [*redis_comparison(agg, s), *floor_comparison(agg, s)]]
    lines += [f"- {v.line(markdown=True)}" for v in checks]
    lines.append("")
    return "\n".join(lines)


def medians_list(agg: Medians) -> list[dict[str, Any]]:
    """The medians as JSON rows."""
    return [{"target": k[0], "concurrency": k[1], "stream": k[2], **v} for k, v in sorted(agg.items())]


def json_data(run: Run, agg: Medians, checks: list[Verdict]) -> dict[str, Any]:
    """Raw per-round numbers, medians and verdicts."""
    return {
        "meta": run.meta,
        "settings": settings_dict(run.settings),
        "notes": run.notes,
        "limit_checks": run.checks,
        "cells": [{**c.summary(), "cpu_role": ROLE_OF[c.target]} for c in run.cells],
        "medians": medians_list(agg),
        "redis_comparison": redis_comparison(agg, run.settings),
        "base_comparison": base_comparison(agg, run.settings),
        "verdicts": [v.as_dict() for v in checks],
    }
