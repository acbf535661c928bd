"""bench/overload.py's numbers: the phases of each gateway, the goals, the flood's memory, and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from fleetgate.config import AdmissionConfig
from fleetgate.scheduling.reserve import ShareReserve
from harness.report import command_line, loadavg, markdown_table, print_table, section_head, update_docs
from overload_load import MODEL, PROMPT_ESTIMATE, LoadResult, Trickle

SECTION = "## Overload (bench/overload.py)"
DEFAULTS = AdmissionConfig()
DEFAULT_QUANTUM = DEFAULTS.quantum
RESERVE_OFF = {"FLEETGATE_ADMISSION__RESERVE_SLOTS": "0", "FLEETGATE_ADMISSION__RESERVE_FRACTION": "0"}
PROFILE = "smollm2-llamacpp-local"
REPLICAS = 2
SLOTS = 2  # the simulator's --max-num-seqs, and the gateway's max in flight per replica
FAIR_SHARE = REPLICAS * SLOTS // 2  # two tenants of equal weight
NOISY_WORKERS = 10 * FAIR_SHARE
MAX_QUEUE = 20
QUEUE_TIMEOUT = 5.0
TTFT_RATIO_TARGET = 2.0
RSS_TREND_TARGET_MB = 5.0  # flat: RSS grows at most this much over the flood's second half (no trend)
RSS_PEAK_TARGET = 0.25  # and the peak stays within +25% of the RSS at the flood's start (a bounded working set)
RATE_TARGET = 0.9  # the gateway answered at least 90% of the offered rate


@dataclass
class Settings:
    """Command-line settings."""

    duration: float
    phase: float
    rate: float
    quiet_rate: float
    docs: Path | None
    json_path: Path | None


@dataclass
class Phase:
    """One measured stretch: the quiet trickle, the other load (if any) and CPU use."""

    name: str
    seconds: float
    quiet: Trickle
    load: LoadResult | None = None
    gateway_cpu: float = 0.0  # share of one core
    machine_busy: float = 0.0  # busy share of all CPUs together, in cores
    other_cpu: float = 0.0  # cores used by processes this benchmark did not start (noise)
    engine_waiting: list[int] = field(default_factory=list)  # the longest engine queue, sampled every 0.1 s

    def engine_queue(self) -> str:
        """How often an engine had requests waiting in its own queue, and the most seen."""
        samples = self.engine_waiting
        if not samples:
            return "-"
        return f"{sum(1 for w in samples if w) / len(samples):.0%} / {max(samples)}"


@dataclass
class ConfigRun:
    """Everything measured against one gateway configuration."""

    label: str
    env: dict[str, str]  # admission settings over the gateway's defaults
    full: bool = True  # every phase (control and flood too), or only alone and noisy
    phases: dict[str, Phase] = field(default_factory=dict)
    shed: dict[str, float] = field(default_factory=dict)  # fleetgate_shed_total by reason, at the end
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (t, VmRSS kB, VmHWM kB)
    flood_window: tuple[float, float] | None = None


def _rss_at(samples: list[tuple[float, int, int]], t: float) -> int:
    """VmRSS (kB) of the last sample at or before `t` (the first sample if none)."""
    before = [s for s in samples if s[0] <= t]
    return (before[-1] if before else samples[0])[1]


def memory_summary(run: ConfigRun) -> dict[str, float]:
    """RSS in MB at the flood's start, its peak and end, 5 s after, the lifetime VmHWM, and growth ratios."""
    assert run.flood_window is not None and run.rss
    a, b = run.flood_window
    inside = [s for s in run.rss if a <= s[0] <= b]
    start_kb, end_kb = _rss_at(run.rss, a), _rss_at(run.rss, b)
    peak_kb = max(s[1] for s in inside) if inside else end_kb
    mid_kb = _rss_at(run.rss, (a + b) / 2)
    return {
        "gateway_start_mb": run.rss[0][1] / 1024,
        "start_mb": start_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "end_mb": end_kb / 1024,
        "after_mb": run.rss[-1][1] / 1024,
        "hwm_mb": run.rss[-1][2] / 1024,
        "end_growth": end_kb / start_kb - 1,
        "peak_growth": peak_kb / start_kb - 1,
        "second_half_mb": (end_kb - mid_kb) / 1024,
        "samples": len(inside),
    }


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "-"


def fairness_rows(runs: list[ConfigRun]) -> list[list[str]]:
    """One row per (config, phase): quiet TTFT and statuses, the other load, CPU."""
    rows = []
    for run in runs:
        for phase in run.phases.values():
            load = phase.load
            rows.append(
                [
                    run.label,
                    phase.name,
                    str(len(phase.quiet.ttft)),
                    f"{phase.quiet.p(50):.1f}",
                    f"{phase.quiet.p(99):.1f}",
                    f"{max(phase.quiet.ttft) * 1e3:.1f}" if phase.quiet.ttft else "-",
                    _statuses(phase.quiet.statuses),
                    f"{load.sent / load.elapsed:,.0f}" if load else "-",
                    _statuses(load.statuses) if load else "-",
                    phase.engine_queue(),
                    f"{phase.gateway_cpu:.0%}",
                    f"{phase.machine_busy:.2f}",
                    f"{phase.other_cpu:.2f}",
                ]
            )
    return rows


FAIRNESS_HEAD = [
    "gateway",
    "phase",
    "quiet n",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "TTFT max ms",
    "quiet statuses",
    "other req/s sent",
    "other statuses",
    "engine queue (time non-empty / max)",
    "gateway CPU",
    "machine busy (cores)",
    "other CPU (cores)",
]


def _word(ok: bool) -> str:
    return f"**{'PASS' if ok else 'FAIL'}**"


def _bad(statuses: dict[str, int]) -> dict[str, int]:
    """Outcomes other than served (200) or refused on purpose (429, 503)."""
    return {k: v for k, v in statuses.items() if k not in ("200", "429", "503")}


def _fairness_verdicts(run: ConfigRun) -> list[str]:
    """The quiet tenant's TTFT next to the noisy one, and how the noisy excess was turned away."""
    alone, noisy = run.phases["alone"], run.phases["noisy"]
    ratio = noisy.quiet.p(99) / alone.quiet.p(99)
    shed = sum(v for k, v in noisy.quiet.statuses.items() if k != "200")
    lines = [
        f"{_word(ratio <= TTFT_RATIO_TARGET and shed == 0)} {run.label}: quiet TTFT p99 next to the noisy tenant "
        f"within {TTFT_RATIO_TARGET:g}x of alone: {noisy.quiet.p(99):.1f} ms vs {alone.quiet.p(99):.1f} ms = "
        f"{ratio:.2f}x; quiet requests not served: {shed}"
    ]
    load = noisy.load
    if load is not None:
        lines.append(
            f"{_word(not _bad(load.statuses) and not load.missing_retry_after)} {run.label}: the noisy "
            f"excess was queued or refused on purpose ({_statuses(load.statuses)}), never a 500, an error or a "
            f"hang; refusals without Retry-After: {load.missing_retry_after}"
        )
    return lines


def _flood_verdicts(run: ConfigRun, rate: float) -> list[str]:
    """The gateway's memory under the flood, and whether it answered the offered rate with 200/429/503 only."""
    mem = memory_summary(run)
    flood = run.phases["flood"].load
    ok = mem["second_half_mb"] <= RSS_TREND_TARGET_MB and mem["peak_growth"] <= RSS_PEAK_TARGET
    lines = [
        f"{_word(ok)} {run.label}: gateway memory flat under the flood (at most "
        f"+{RSS_TREND_TARGET_MB:g} MB over its second half, peak within +{RSS_PEAK_TARGET:.0%} of its start): "
        f"RSS {mem['start_mb']:.1f} MB "
        f"at start, peak {mem['peak_mb']:.1f} MB ({mem['peak_growth']:+.1%}), {mem['end_mb']:.1f} MB at end "
        f"({mem['end_growth']:+.1%}; {mem['second_half_mb']:+.1f} MB over the second half), "
        f"{mem['after_mb']:.1f} MB 5 s later; VmHWM {mem['hwm_mb']:.1f} MB"
    ]
    if flood is not None:
        per_s = sorted(flood.per_second[1:-1]) or [0]  # whole seconds of the flood, ramp and tail left out
        answered = per_s[len(per_s) // 2]
        refused = answered * (flood.statuses.get("429", 0) + flood.statuses.get("503", 0)) / flood.sent
        bad = _bad(flood.statuses)
        lines.append(
            f"{_word(answered >= RATE_TARGET * rate and not bad and not flood.missing_retry_after)} {run.label}: "
            f"the gateway answered the offered {rate:,.0f} req/s "
            f"(at least {RATE_TARGET:.0%}) with 200/429/503 only: {answered:,.0f} req/s answered "
            f"(median second), of which {refused:,.0f} req/s refused, {flood.skipped:,} due requests not sent "
            f"because 512 were outstanding; other outcomes {_statuses(bad)}; refusals without Retry-After: "
            f"{flood.missing_retry_after}"
        )
    return lines


def verdicts(runs: list[ConfigRun], rate: float) -> list[str]:
    """PASS/FAIL lines for every target."""
    lines = []
    for run in runs:
        lines += _fairness_verdicts(run)
        if "flood" in run.phases:
            lines += _flood_verdicts(run, rate)
    return lines


def _flood_values(run: ConfigRun) -> dict[str, str]:
    """The flood's numbers of one gateway, by what they are."""
    flood = run.phases["flood"]
    load = flood.load
    assert load is not None
    mem = memory_summary(run)
    per_s = sorted(load.per_second[1:-1]) or [0]
    values = {
        "offered / sent": f"{load.sent + load.skipped:,} / {load.sent:,} in {load.elapsed:.1f} s",
        "answered per second (min / median / max)": f"{per_s[0]:,} / {per_s[len(per_s) // 2]:,} / {per_s[-1]:,}",
        "flood statuses": _statuses(load.statuses),
    }
    for status, (p50, p99, top) in sorted(load.latency_ms.items()):
        values[f"flood latency of {status} (p50 / p99 / max)"] = f"{p50:.1f} / {p99:.1f} / {top:.1f} ms"
    values.update(
        {
            "quiet TTFT during the flood (p50 / p99)": f"{flood.quiet.p(50):.1f} / {flood.quiet.p(99):.1f} ms",
            "quiet statuses during the flood": _statuses(flood.quiet.statuses),
            "gateway CPU / machine busy / other CPU": (
                f"{flood.gateway_cpu:.0%} of a core / {flood.machine_busy:.2f} / {flood.other_cpu:.2f} cores"
            ),
            "gateway RSS after start-up": f"{mem['gateway_start_mb']:.1f} MB",
            "gateway RSS at flood start / peak / end": (
                f"{mem['start_mb']:.1f} / {mem['peak_mb']:.1f} / {mem['end_mb']:.1f} MB"
            ),
            "gateway RSS every 10 s of the flood": " / ".join(f"{mb:.1f}" for mb in rss_trajectory(run)) + " MB",
            "gateway RSS 5 s after the flood; VmHWM": f"{mem['after_mb']:.1f} MB; {mem['hwm_mb']:.1f} MB",
            "RSS samples during the flood": str(mem["samples"]),
        }
    )
    return values


def rss_trajectory(run: ConfigRun, step: float = 10.0) -> list[float]:
    """VmRSS in MB at the flood's start and every `step` seconds of it, and at its end."""
    assert run.flood_window is not None
    a, b = run.flood_window
    marks = [a + step * i for i in range(int((b - a) // step) + 1)]
    if b - marks[-1] > 1.0:
        marks.append(b)
    return [_rss_at(run.rss, t) / 1024 for t in marks]


def flood_table(runs: list[ConfigRun]) -> tuple[list[str], list[list[str]]]:
    """The flood's numbers, one column per gateway."""
    runs = [r for r in runs if "flood" in r.phases]
    values = [_flood_values(r) for r in runs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    return ["flood", *(r.label for r in runs)], [[k, *(v.get(k, "-") for v in values)] for k in keys]


def print_report(console: Console, runs: list[ConfigRun], rate: float) -> None:
    """The tables and verdicts on the console."""
    print_table(console, "quiet tenant TTFT (ms)", FAIRNESS_HEAD, fairness_rows(runs), FAIRNESS_HEAD)
    head, rows = flood_table(runs)
    print_table(console, "flood", head, rows, head)
    for line in verdicts(runs, rate):
        console.print(line.replace("**", ""))


def setup_text(s: Settings, meta: dict[str, Any]) -> str:
    """The section's Setup paragraph."""
    held = ShareReserve(DEFAULTS.reserve_slots, DEFAULTS.reserve_fraction).reserved(REPLICAS * SLOTS)
    return (
        f"Setup: {REPLICAS} `sim-engine` replicas (`python -m fleetgate.cli.sim --profile {PROFILE} --time-scale 5 "
        f"--max-num-seqs {SLOTS}`: the llama.cpp timing measured on this machine, run 5x faster) behind one "
        f"`fleetgate up --engine URL --engine URL --no-self-test` gateway with its own fresh state dir and "
        f"`FLEETGATE_ADMISSION__MAX_IN_FLIGHT_PER_REPLICA={SLOTS}`, `MAX_QUEUE={MAX_QUEUE}`, `QUEUE_TIMEOUT` "
        f"{QUEUE_TIMEOUT:g} s for every priority; fleet capacity is {REPLICAS * SLOTS} requests in flight. Two "
        f"tenants (`quiet`, `noisy`, weight 1, standard priority, no limits) are created through the admin API. "
        f"Requests are chat completions of `{MODEL}` with a {PROMPT_ESTIMATE}-token prompt estimate and "
        f"`max_tokens` 16. The quiet "
        f"tenant sends an open-loop trickle of {s.quiet_rate:g} streamed req/s from the benchmark process; its "
        f"TTFT is measured to the first SSE chunk carrying content. Phases: `alone` ({s.phase:g} s, after 2 s of "
        f"warm-up), `noisy` ({s.phase:g} s, while a separate process runs {NOISY_WORKERS} closed-loop streamed "
        f"clients of the noisy tenant = 10x its fair share of 2 slots, each retrying 0.1 s after a refusal), "
        f"`noisy-1x` ({s.phase:g} s, the same with {FAIR_SHARE} clients: exactly its share, a control for how much "
        f"of the TTFT rise is waiting for a slot at saturation), and `flood` ({s.duration:g} s, while a separate "
        f"process offers {s.rate:,.0f} non-streamed req/s of the noisy tenant open loop, at most 512 outstanding, "
        f"via aiohttp on uvloop). The gateway runs with the default admission settings otherwise: DRR quantum "
        f"{DEFAULT_QUANTUM} tokens, and the reserve (`reserve_slots` {DEFAULTS.reserve_slots}, `reserve_fraction` "
        f"{DEFAULTS.reserve_fraction:g}: here {held} "
        f"of the {REPLICAS * SLOTS} slots) that only tenants under their weighted share may take while another "
        f"tenant was active in the last {DEFAULTS.active_window:g} s; for contrast a second gateway with the "
        f"reserve off (`FLEETGATE_ADMISSION__RESERVE_SLOTS=0`, `RESERVE_FRACTION=0`: plain work-conserving DRR, "
        f"the previous behaviour) runs `alone` and `noisy` only. Engine queue is how much of the phase either "
        f"engine had requests waiting in its own queue (`vllm:num_requests_waiting` from its /metrics, sampled "
        f"every 0.1 s by the benchmark) and the most seen; the engines run `--max-num-seqs {SLOTS}`, the gateway "
        f"admits {SLOTS} per replica, so they stay near 0 (a request waits there until the engine's next step). "
        f"Gateway RSS is VmRSS from `/proc/<pid>/status` sampled every 0.25 s (VmHWM is the "
        f"process's lifetime peak). Gateway CPU is utime+stime of its process over the phase (from before the "
        f"other load starts until it ended); machine busy is the busy time of all CPUs (/proc/stat) in cores; "
        f"other CPU is machine busy minus irq, softirq and steal time minus what the gateway, the engines, the "
        f"benchmark and its load generators "
        f"used: processes this benchmark did not start (noise). Gateway, engines and clients share the same "
        f"{meta['nproc']} CPUs."
    )


def docs_section(runs: list[ConfigRun], s: Settings, meta: dict[str, Any]) -> str:
    """The Markdown section for docs/benchmarks.md."""
    parts = [
        *section_head(SECTION, meta, meta.get("command") or command_line(), setup_text(s, meta)),
        *markdown_table(FAIRNESS_HEAD, fairness_rows(runs)),
        "",
        *markdown_table(*flood_table(runs)),
        "",
        "Shed by the gateway (fleetgate_shed_total at the end): "
        + "; ".join(f"{r.label}: {_statuses({k: int(v) for k, v in r.shed.items()})}" for r in runs)
        + ".",
        "",
        *(f"- {line}" for line in verdicts(runs, s.rate)),
        "",
        *([reading(runs), ""] if "noisy-1x" in runs[0].phases else []),
        *([f"Machine: {meta['note']}", ""] if meta.get("note") else []),
    ]
    return "\n".join(parts)


def _served(phase: Phase) -> float:
    """Requests per second that got a 200 in a phase, both tenants."""
    assert phase.load is not None
    return phase.load.statuses.get("200", 0) / phase.load.elapsed + phase.quiet.statuses.get("200", 0) / phase.seconds


def reading(runs: list[ConfigRun]) -> str:
    """What the phases say about the TTFT target, from the numbers of the default run and the contrast."""
    run = runs[0]
    alone, noisy, share = (run.phases[k] for k in ("alone", "noisy", "noisy-1x"))
    assert noisy.load is not None
    slots = REPLICAS * SLOTS
    held = ShareReserve(DEFAULTS.reserve_slots, DEFAULTS.reserve_fraction).reserved(slots)
    text = "Reading:"
    contrast = next((r for r in runs[1:] if "noisy" in r.phases), None)
    if contrast is not None:
        c_alone, c_noisy = contrast.phases["alone"], contrast.phases["noisy"]
        served = _served(c_noisy)
        text += (
            f" without the reserve ({contrast.label}) the noisy tenant at 10x its share keeps all {slots} slots busy "
            f"({served:.1f} req/s went through, so a request held its slot about {slots / served * 1e3:.0f} ms); the "
            f"fair queue puts a quiet request first in line, but it still waits for the first running request to "
            f"end: quiet p99 {c_noisy.quiet.p(99):.1f} ms ({c_noisy.quiet.p(99) / c_alone.quiet.p(99):.2f}x its "
            f"{c_alone.quiet.p(99):.1f} ms alone)."
        )
    text += (
        f" With the reserve the noisy tenant may take {slots - held} of the {slots} slots while the quiet tenant is "
        f"active, so a quiet request finds a free slot on arrival, and the router's `has_room` filter sends it to "
        f"the replica that has it: quiet p99 {noisy.quiet.p(99):.1f} ms "
        f"({noisy.quiet.p(99) / alone.quiet.p(99):.2f}x alone; with the noisy tenant at exactly its share "
        f"{share.quiet.p(99):.1f} ms). What remains (p50 {alone.quiet.p(50):.1f} -> {noisy.quiet.p(50):.1f} ms) is "
        f"sharing an engine's batch with a noisy request: the quiet prefill waits for the running step and then "
        f"runs in a batch of two."
    )
    if contrast is not None:
        text += (
            f" The price is throughput while the reserved slot idles between quiet requests: {_served(noisy):.1f} "
            f"req/s served in all with the reserve vs {_served(contrast.phases['noisy']):.1f} without."
        )
    return text


def load_runs(path: Path) -> tuple[dict[str, Any], list[ConfigRun]]:
    """The meta data and runs of a `--json` file, for `--report-from`."""
    raw = json.loads(path.read_text())
    runs = []
    for r in raw["runs"]:
        phases = {}
        for name, ph in r["phases"].items():
            load = LoadResult(**ph["load"]) if ph["load"] is not None else None
            phases[name] = Phase(**{**ph, "quiet": Trickle(**ph["quiet"]), "load": load})
        window = tuple(r["flood_window"]) if r["flood_window"] is not None else None
        rss = [(t, rss_kb, hwm_kb) for t, rss_kb, hwm_kb in r["rss"]]
        r.pop("quantum", None)  # files from before the contrast was the reserve
        runs.append(ConfigRun(**{"env": {}, **r, "phases": phases, "rss": rss, "flood_window": window}))
    return raw["meta"], runs


def publish(console: Console, runs: list[ConfigRun], settings: Settings, meta: dict[str, Any]) -> None:
    """Print the report and, unless --no-docs, write its section of the docs."""
    print_report(console, runs, settings.rate)
    console.print(f"load average {loadavg(meta['loadavg_start'])} at start, {loadavg(meta['loadavg_end'])} at end")
    if runs and "noisy-1x" in runs[0].phases:
        console.print(reading(runs))
    if settings.docs is not None:
        update_docs(settings.docs, SECTION, docs_section(runs, settings, meta))
        console.print(f"updated {settings.docs}")
