"""bench/gate_micro.py's numbers: percentiles per scenario and phase, the goals, and the report and docs section."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from fleetgate.config import MeteringConfig, TenancyConfig
from gate_micro_steps import LIMITS, MODEL, Series
from harness.figures import gate_micro_figure
from harness.plots import Plot
from harness.report import Verdict, markdown_table, print_table, print_verdicts, section_head, settings_dict
from harness.stats import nearest_rank

SECTION = "## Tenant plane and outbox cost (bench/gate_micro.py)"
SCENARIOS = ("gate-memory", "gate-redis", "outbox", "capture")
TITLES = {
    "gate-memory": "tenant plane, in-process limits",
    "gate-redis": "tenant plane, Redis limits",
    "outbox": "outbox",
    "capture": "usage capture (what the proxy calls)",
}
PHASES = {
    "gate-memory": ("authenticate", "admit", "settle"),
    "gate-redis": ("authenticate", "admit", "settle"),
    "outbox": ("started", "finished"),
    "capture": ("begin", "finish"),
}
TOTAL_LABEL = {
    "gate-memory": "authenticate + admit + settle",
    "gate-redis": "authenticate + admit + settle",
    "outbox": "Outbox.started + Outbox.finished",
    "capture": "measured() + begin, measured() + finish",
}
PLOT = Plot(
    "gate_micro",
    lambda d: gate_micro_figure(d, TITLES),
    SECTION,
    "Tenant plane and outbox: p50 and p99 µs per scenario and phase",
)

# Goals from the tracker (the verdict lines of the report).
MAX_GATE_MEMORY_P50_US = 200.0
MAX_GATE_REDIS_P50_US = 1000.0
MAX_OUTBOX_P50_US = 300.0


@dataclass
class Settings:
    """What one run does, from the command line."""

    rounds: int
    requests: int
    warmup: int
    scenarios: list[str]
    redis_url: str
    directory: Path | None
    json_path: Path | None
    docs_path: Path | None
    command: str
    plot_from: Path | None = None


@dataclass
class Run:
    """Everything measured, plus the facts the report needs."""

    settings: Settings
    meta: dict[str, Any]
    series: dict[str, Series] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # scenario -> why it shows n/a
    checks: dict[str, str] = field(default_factory=dict)  # what was verified about the setup


def pct(samples: list[int], q: float) -> float:
    """The q-th percentile (0-100) of nanosecond samples, in microseconds (nearest rank on the sorted list)."""
    value = nearest_rank(samples, q)
    assert value is not None, "no samples"
    return value / 1e3


def summarise(run: Run) -> list[dict[str, Any]]:
    """One row per scenario total and per phase: p50, p99, p99.9, mean, the range of per-round p50s."""
    rows: list[dict[str, Any]] = []
    for name in run.settings.scenarios:
        series = run.series.get(name)
        if series is None or not series.total:
            rows.append({"scenario": name, "what": TOTAL_LABEL[name], "phase": None, "na": run.notes.get(name)})
            continue
        parts: list[tuple[str | None, list[int]]] = [(None, series.total)]
        parts += [(p, series.phases[p]) for p in PHASES[name]]
        for phase, samples in parts:
            row: dict[str, Any] = {
                "scenario": name,
                "what": TOTAL_LABEL[name] if phase is None else phase,
                "phase": phase,
                "samples": len(samples),
                "p50_us": pct(samples, 50),
                "p99_us": pct(samples, 99),
                "p999_us": pct(samples, 99.9),
                "mean_us": statistics.fmean(samples) / 1e3,
            }
            if phase is None:
                row["round_p50_min_us"] = min(series.round_p50_ns) / 1e3
                row["round_p50_max_us"] = max(series.round_p50_ns) / 1e3
                row["cpu_us_per_req"] = series.cpu_s / len(samples) * 1e6
                row["other_cpu_share"] = series.other_cpu_s / series.wall_s if series.wall_s else None
            rows.append(row)
    return rows


def verdicts(rows: list[dict[str, Any]], run: Run) -> list[Verdict]:
    """Check the p50s against the tracker's targets."""
    total = {r["scenario"]: r for r in rows if r["phase"] is None}

    def p50(name: str) -> float | None:
        row = total.get(name)
        return None if row is None or "p50_us" not in row else float(row["p50_us"])

    def check(goal: str, name: str, limit: float, extra: str = "") -> Verdict:
        value = p50(name)
        if value is None:
            why = run.notes.get(name, "not run")
            return Verdict(goal, f"n/a ({why})", None)
        return Verdict(goal, f"{value:.1f} µs p50 ({total[name]['p99_us']:.1f} µs p99){extra}", value <= limit)

    capture = p50("capture")
    return [
        check(
            f"auth + policy + limits <= {MAX_GATE_MEMORY_P50_US / 1e3:g} ms p50 in-process",
            "gate-memory",
            MAX_GATE_MEMORY_P50_US,
        ),
        check(
            f"auth + policy + limits <= {MAX_GATE_REDIS_P50_US / 1e3:g} ms p50 with Redis",
            "gate-redis",
            MAX_GATE_REDIS_P50_US,
        ),
        check(
            f"outbox append <= {MAX_OUTBOX_P50_US / 1e3:g} ms p50 (both appends of a request together)",
            "outbox",
            MAX_OUTBOX_P50_US,
            "" if capture is None else f"; with building the records (usage capture) {capture:.1f} µs p50",
        ),
    ]


def _fmt(row: dict[str, Any], key: str, spec: str = ".1f") -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


COLUMNS = (
    "scenario",
    "timed",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "mean µs",
    "round p50s µs",
    "CPU µs/req",
    "other CPU",
    "samples",
)


LEFT = ("scenario", "timed")


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Rows of the report table: each scenario's total, then its phases indented."""
    out: list[tuple[str, ...]] = []
    for row in rows:
        if row.get("na"):
            out.append((TITLES[row["scenario"]], row["what"], "n/a", *("-",) * (len(COLUMNS) - 3)))
            continue
        first = row["phase"] is None
        spread = f"{row['round_p50_min_us']:.1f}-{row['round_p50_max_us']:.1f}" if first else ""
        out.append(
            (
                TITLES[row["scenario"]] if first else "",
                row["what"] if first else f"↳ {row['what']}",
                _fmt(row, "p50_us"),
                _fmt(row, "p99_us"),
                _fmt(row, "p999_us"),
                _fmt(row, "mean_us"),
                spread,
                _fmt(row, "cpu_us_per_req") if first else "",
                _fmt(row, "other_cpu_share", ".0%") if first else "",
                str(row["samples"]) if first else "",
            )
        )
    return out


def setup_text(run: Run) -> str:
    """The section's Setup paragraph."""
    s, m = run.settings, run.meta
    metering, tenancy = MeteringConfig(), TenancyConfig()
    redis = (
        f"Redis {m['redis_version']} on 127.0.0.1, shared with the machine's other users"
        if m.get("redis_version")
        else "no Redis"
    )
    return (
        "Setup: one process on uvloop, no HTTP: the calls the proxy makes per request, timed with "
        "`perf_counter_ns`. A real `TenantStore` on a temporary SQLite file (WAL) holds one tenant with "
        f"rpm {LIMITS['rpm']:,}, tpm {LIMITS['tpm']:,}, max_concurrency {LIMITS['max_concurrency']:,} and a budget "
        f"of {LIMITS['budget']:,.0f} a month (never refusing, but every limit is checked and counted: verified "
        'before timing by reading the limiter\'s counters mid-request), `models: ["*"]`, and one key; the key '
        f"cache polls the store's revision every {tenancy.poll_interval:g} s as in the gateway. The model "
        f"(`{MODEL}`) has a price, so the budget counter really moves. Tenant plane = `TenantGate.authenticate` "
        "(cached key) + `admit` (model check, policy, token estimate, price, limiter reserve) + `settle` (inline for "
        "the in-process limiter, whose settle never suspends; in its own shielded task for Redis; as in the "
        'gateway), with `make_limiter("memory", ...)` and with '
        f'`make_limiter("redis", "{s.redis_url}", "fail_closed")` ({redis}; a Redis error would abort the run, '
        "so no number here comes from the in-process fallback). Outbox = `Outbox.started` + `Outbox.finished` "
        f"with records built beforehand (untimed), in a temporary directory on {m.get('workdir_fs', '?')}, default "
        f"segment size ({metering.segment_bytes >> 20} MiB) and fsync every {metering.fsync_interval:g} s in a "
        "worker thread. Usage capture = `capture.begin(outcome.measured(), ...)` + `capture.finish("
        "outcome.measured())` with the engine's usage present, i.e. the outbox appends plus building the "
        "records, as the proxy calls them. "
        f"{s.rounds} rounds; in each, every scenario runs {s.warmup} untimed then {s.requests} timed requests, "
        "in an order that rotates by round; the loop yields once between requests (so the fsync and polling "
        "tasks run, as they would between requests in the gateway). The collector runs with the gateway's "
        "settings (`gc.freeze()`, threshold 20000). Percentiles pool all rounds; `round p50s` is the range of "
        "the per-round medians (drift and noise). `CPU µs/req` is this process's CPU time (all its threads, the "
        "fsync worker and the SQLite thread included) over the timed stretches divided by the requests; it "
        "includes a few µs of untimed per-request set-up (parsing the body, building records), and for Redis "
        "only the client side. `other CPU` is what every other process except the Redis server used meanwhile "
        "(busy time from /proc/stat), as a share of one core: the noise the numbers were taken under."
    )


def markdown_section(run: Run, rows: list[dict[str, Any]], checks: list[Verdict]) -> str:
    """The docs section: machine, command, setup, table, verdicts."""
    lines = section_head(SECTION, run.meta, run.settings.command, setup_text(run))
    lines += markdown_table(COLUMNS, table_rows(rows), LEFT)
    lines.append("")
    for name, why in run.notes.items():
        lines += [f"{TITLES[name]}: n/a ({why}).", ""]
    lines += [f"- {v.line(markdown=True)}" for v in checks]
    lines.append("")
    return "\n".join(lines)


def print_report(console: Console, rows: list[dict[str, Any]], checks: list[Verdict]) -> None:
    """The Rich table and the verdicts."""
    print_table(console, "Tenant plane and outbox cost per request", COLUMNS, table_rows(rows), LEFT)
    print_verdicts(console, checks)


def json_data(run: Run, rows: list[dict[str, Any]], checks: list[Verdict]) -> dict[str, Any]:
    """Summaries, per-round p50s and verdicts (not the raw samples)."""
    return {
        "meta": run.meta,
        "settings": settings_dict(run.settings),
        "notes": run.notes,
        "checks": run.checks,
        "rows": rows,
        "round_p50_us": {n: [x / 1e3 for x in s.round_p50_ns] for n, s in run.series.items()},
        "verdicts": [v.as_dict() for v in checks],
    }
