"""The offline fleet simulator: determinism, conservation, exactness of its shortcuts, routing effects, traces, CLI."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from fleetgate.cli import simulate
from fleetgate.config import AdmissionConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.sim.fleet import FleetSim, FleetSpec, Outcome, RunResult
from fleetgate.sim.profiles import Profile, load_profile
from fleetgate.sim.report import PolicyReport, summarize
from fleetgate.sim.workload import ChatWorkload, SimRequest, TraceWorkload

H100 = load_profile("h100-llama3-8b")
CHAT = ChatWorkload(requests=600, rate=15.0, tenants=3, seed=7)
# one tenant sends 90% of the traffic, all of it behind one 3000-token system prompt
HOT = ChatWorkload(
    requests=1200, rate=80.0, tenants=6, tenant_skew=3.0, system_prompts=1, system_tokens=(3000, 3000),
    user_tokens=(20, 60), turns=1.0, seed=2,
)  # fmt: skip
TIMING = ("wall_s", "events_per_s")  # the only fields allowed to differ between identical runs


def run(workload: Any, policy: str = "score", profile: Profile = H100, **spec: Any) -> RunResult:
    """One simulated run."""
    return FleetSim(FleetSpec(profile, policy=policy, **{"replicas": 4, **spec})).run(workload)


def report(workload: Any, policy: str, **spec: Any) -> PolicyReport:
    """One run, summarized."""
    return summarize(run(workload, policy, **spec))


def numbers(rep: PolicyReport | dict[str, Any]) -> dict[str, Any]:
    """The report without wall-clock fields."""
    data = rep.to_json() if isinstance(rep, PolicyReport) else dict(rep)
    return {k: v for k, v in data.items() if k not in TIMING}


def test_same_seed_same_report_and_another_seed_differs() -> None:
    first, again = report(CHAT, "score"), report(CHAT, "score")
    assert numbers(first) == numbers(again)
    other = report(ChatWorkload(requests=600, rate=15.0, tenants=3, seed=8), "score")
    assert numbers(other) != numbers(first)


def test_same_report_in_processes_with_different_hash_seeds() -> None:
    # str hashes are salted per process (the prefix index uses them): results must not depend on it
    script = (
        "import typer, sys\nfrom fleetgate.cli import simulate\napp = typer.Typer()\n"
        "app.command('noop')(lambda: None)\nsimulate.register(app)\napp()\n"
    )
    args = ["simulate", "-n", "3", "--requests", "200", "--rate", "10", "--policies", "prefix,score", "--json"]
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120, check=True
        )
        outputs.append([numbers(p) for p in json.loads(done.stdout)["policies"]])
    assert outputs[0] == outputs[1]


def test_every_request_ends_exactly_once_and_tokens_add_up() -> None:
    requests = list(ChatWorkload(requests=800, rate=60.0, tenants=3, seed=3))
    # a small allowance, queue and deadline: requests queue, and some are refused, pushed out or time out
    timeouts = {"interactive": 1.0, "standard": 2.0, "batch": 5.0}
    tight = AdmissionConfig(max_in_flight_per_replica=8, max_queue=100, queue_timeout=timeouts)
    result = run(requests, "least_load", replicas=3, admission=tight)
    outs = result.outcomes
    assert sorted(o.index for o in outs) == list(range(len(requests)))
    ok = [o for o in outs if o.status == "ok"]
    shed = [o for o in outs if o.status.startswith("shed:")]
    assert len(ok) + len(shed) == len(requests) and ok
    assert {o.status for o in shed} == {"shed:queue_full", "shed:evicted", "shed:deadline"}
    for o in ok:
        req = requests[o.index]
        assert o.arrival <= o.routed_at <= o.scheduled_at <= o.first_token_at <= o.finished_at
        assert o.output_tokens == min(len(req.reply), req.max_tokens)
        assert 0 <= o.cached_tokens < o.prompt_tokens == len(req.prompt_ids)
    for o in shed:
        assert o.replica == -1 and o.finished_at >= o.arrival
    engines = [r.engine for r in result.replicas]
    assert sum(sum(e.stats.finished.values()) for e in engines) == len(ok)
    assert sum(e.stats.generation_tokens for e in engines) == sum(o.output_tokens for o in ok)
    assert sum(e.stats.prompt_tokens for e in engines) == sum(o.prompt_tokens for o in ok)
    assert sum(e.stats.prompt_tokens_cached for e in engines) == sum(o.cached_tokens for o in ok)
    assert sum(r.routed for r in result.replicas) == len(ok)
    assert not any(e.has_work() for e in engines)
    assert all(r.replica.in_flight == 0 and r.replica.in_flight_tokens == 0 for r in result.replicas)
    summary = summarize(result)  # the run ends with its last request, not with leftover deadline events
    assert summary.sim_seconds == pytest.approx(max(o.finished_at for o in outs) - min(o.arrival for o in outs))
    assert summary.ok == len(ok) and sum(summary.shed.values()) == len(shed)
    for rep in result.replicas:  # the last scrape (what the scorers and the capacity rule read) saw the end state
        m = rep.replica.metrics
        assert m is not None and m.running == m.waiting == 0 and m.kv_usage == 0.0
        assert m.generation_tokens == rep.engine.stats.generation_tokens > 0


@pytest.mark.parametrize("case", ["small_kv", "long_chats", "full_batch"])
def test_fast_forward_and_seeded_hashes_give_identical_results(case: str) -> None:
    spec: dict[str, Any] = {}
    if case == "full_batch":  # two slots per engine, no gateway queue: requests wait in the engine behind a full batch
        profile = load_profile("smollm2-llamacpp-local")
        workload = ChatWorkload(requests=120, rate=2.0, system_tokens=(50, 150), reply_tokens=(8, 64), seed=4)
        spec = {"admission": None, "scrape_interval": 0.25}
    elif case == "small_kv":  # blocks run out: evictions, preemptions and requests waiting for KV all happen
        profile = H100.with_overrides(kv_blocks=300, max_num_seqs=24)
        workload = ChatWorkload(requests=300, rate=25.0, tenants=3, system_tokens=(200, 600), seed=5)
    else:  # later turns hit the cache through earlier answers, whose block hashes the seeding carries over
        profile = H100
        workload = ChatWorkload(requests=300, rate=20.0, tenants=2, turns=6.0, think_time=1.0, seed=6)

    def fingerprint(fast: bool, seeded: bool) -> tuple[Any, ...]:
        result = run(workload, "score", profile, replicas=3, fast_forward=fast, seed_hashes=seeded, **spec)
        engines = [
            (s.steps, s.generation_tokens, s.prefix_hits, s.preemptions, s.finished, e.pool.evictions,
             e.pool.num_cached)
            for e, s in ((r.engine, r.engine.stats) for r in result.replicas)
        ]  # fmt: skip
        scrapes = [(r.load_sum, r.load_max, r.kv_sum) for r in result.replicas]  # what the scorers saw
        return [astuple(o) for o in result.outcomes], engines, scrapes, result.end_time

    slow = fingerprint(False, False)
    if case == "full_batch":
        result = run(workload, "score", profile, replicas=3, **spec)
        assert any(o.scheduled_at - o.routed_at > 1.0 for o in result.outcomes)  # waited behind a full batch
    elif case == "small_kv":
        assert sum(e[3] for e in slow[1]) > 0 and sum(e[5] for e in slow[1]) > 0
    else:
        requests = list(workload)
        cached = [f.name for f in fields(Outcome)].index("cached_tokens")
        through_answers = [o for o in slow[0] if o[cached] > requests[o[0]].parent_len + 100]
        assert len(through_answers) > 20
    assert fingerprint(True, True) == slow
    assert fingerprint(True, False) == slow


def test_prefix_aware_policies_hit_the_cache_more_and_answer_sooner() -> None:
    workload = ChatWorkload(requests=1000, rate=20.0, tenants=4, seed=11)
    rr = report(workload, "round_robin", replicas=8)
    for policy in ("prefix", "score"):
        rep = report(workload, policy, replicas=8)
        assert rep.cache_hit_ratio > rr.cache_hit_ratio + 0.1, policy
        assert rep.ttft_p50_ms < 0.8 * rr.ttft_p50_ms, policy


def test_hot_prefix_stays_spread_only_with_the_imbalance_rule() -> None:
    # Observed: ScorePolicy's imbalance rule (used by `prefix` and `score` alike) is what bounds the load. With
    # it, both spread the hot prefix; without it, a full prefix match (weight 3) outweighs every load scorer
    # and the busiest replica takes most of the traffic, for `score` as much as for `prefix`.
    spread = report(HOT, "score", replicas=8)
    assert spread.load_max_mean < 1.3 and spread.ttft_p99_ms < 1000
    guarded_prefix = report(HOT, "prefix", replicas=8)
    assert guarded_prefix.load_max_mean < 1.3
    piled = report(HOT, "prefix", replicas=8, router_params={"imbalance_abs": 1e9})
    assert piled.load_max_mean > 3
    assert piled.load_max_min is None or piled.load_max_min > 10
    assert piled.ttft_p50_ms > 10 * spread.ttft_p50_ms


def _trace(tmp_path: Path) -> Path:
    system = {"role": "system", "content": "You answer questions about the fleet. " * 40}
    rows: list[dict[str, Any]] = []
    for i in range(30):  # chat rows sharing a long system prompt, out of order on purpose
        user = {"role": "user", "content": f"question {i}: how many replicas?"}
        rows.append({"arrival": 10.0 + (29 - i) * 0.05, "tenant": "acme", "messages": [system, user], "max_tokens": 8})
    rows.append({"t": 9.5, "tenant": "beta", "prompt": "Complete this sentence please", "completion_tokens": 5})
    for i in range(5):  # a ledger export: counts only
        rows.append({"started_at": 11.0 + i, "tenant_id": "gamma", "prompt_tokens": 400, "completion_tokens": 7,
                     "status": "ok", "priority": "batch"})  # fmt: skip
    rows.append({"started_at": 12.5, "tenant_id": "gamma", "prompt_tokens": 9, "completion_tokens": 0,
                 "status": "rejected"})  # fmt: skip
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return path


def test_recorded_trace_replays_in_arrival_order(tmp_path: Path) -> None:
    requests = list(TraceWorkload(_trace(tmp_path)))
    assert len(requests) == 36  # the rejected ledger row never reached an engine
    assert [r.arrival for r in requests] == sorted(r.arrival for r in requests) and requests[0].arrival == 0.0
    assert requests[0].tenant == "beta" and requests[-1].tenant == "gamma" and requests[-1].prompt_text is None
    result = run(requests, "prefix", replicas=2)
    outs = {o.index: o for o in result.outcomes}
    assert all(o.status == "ok" for o in outs.values())
    for req in requests:
        expected = 5 if req.tenant == "beta" else 7 if req.tenant == "gamma" else None
        if expected is not None:
            assert outs[req.index].output_tokens == expected
        else:
            assert 1 <= outs[req.index].output_tokens <= 8
    acme = [outs[r.index] for r in requests if r.tenant == "acme"]
    assert sum(o.cached_tokens for o in acme) > 0.5 * sum(o.prompt_tokens for o in acme)  # shared system prompt
    gamma = [outs[r.index] for r in requests if r.tenant == "gamma"]
    assert all(o.cached_tokens == 0 for o in gamma)  # token counts only: nothing in common


def test_bad_trace_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival": 1, "prompt": "hi"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2"):
        list(TraceWorkload(path))
    path.write_text('{"prompt": "no time"}\n')
    with pytest.raises(ConfigError, match="arrival"):
        list(TraceWorkload(path))


def test_cli_compares_policies_as_json_and_plots(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps Typer in multi-command mode
    simulate.register(app)
    png = tmp_path / "policies.png"
    args = ["simulate", "-n", "2", "--requests", "150", "--rate", "8", "--policies", "round_robin,score"]
    result = CliRunner().invoke(app, [*args, "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["policy"] for p in data["policies"]] == ["round_robin", "score"]
    assert all(p["ok"] == 150 and len(p["replicas"]) == 2 for p in data["policies"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace = _trace(tmp_path)
    table = CliRunner().invoke(app, ["simulate", "--trace", str(trace), "--policies", "least_load"])
    assert table.exit_code == 0 and "cache hit ratio" in table.stdout
    bad = CliRunner().invoke(app, ["simulate", "--policies", "nope"])
    assert bad.exit_code == 2


def test_generated_requests_carry_their_history() -> None:
    requests = list(ChatWorkload(requests=200, rate=50.0, tenants=1, system_prompts=1, turns=5.0, think_time=0.1))
    by_conv: dict[str, list[SimRequest]] = {}
    for req in requests:
        assert req.session is not None
        by_conv.setdefault(req.session, []).append(req)
    follow_ups = [turns for turns in by_conv.values() if len(turns) > 1]
    assert follow_ups
    for turns in follow_ups:
        for prev, nxt in itertools.pairwise(turns):
            # the next prompt holds the previous prompt and its answer, as the engine saw and said them
            assert nxt.prompt_ids[: len(prev.prompt_ids) + len(prev.reply_ids)] == prev.prompt_ids + prev.reply_ids
            assert prev.prompt_text is not None and nxt.prompt_text is not None
            assert nxt.prompt_text.startswith(prev.prompt_text)


def _flat(index: int, arrival: float, tenant: str, tokens: int = 200) -> SimRequest:
    """A standalone request with its own prompt (no reuse) and a fixed-length answer."""
    prompt = [1000 + index * 7919 % 50_000 + i for i in range(tokens)]
    return SimRequest(index, arrival, tenant, prompt, 32, ["x"] * 32, [7] * 32, prompt_text=f"{tenant}-{index}")


def test_the_gateways_reserve_lets_a_quiet_tenant_start_at_once() -> None:
    # A noisy tenant queues 60 requests at once; a quiet one sends one every 0.5 s. With the gateway's reserve the
    # quiet requests are admitted on arrival; with it off (plain work-conserving DRR) they wait for a slot to end.
    noisy = [_flat(i, 0.0, "noisy") for i in range(60)]
    quiet = [_flat(100 + i, 0.5 + i * 0.5, "quiet") for i in range(8)]
    requests = sorted(noisy + quiet, key=lambda r: (r.arrival, r.index))

    def quiet_waits(**admission: Any) -> list[float]:
        cfg = AdmissionConfig(max_in_flight_per_replica=4, **admission)
        result = run(requests, "round_robin", replicas=1, admission=cfg)
        return [o.routed_at - o.arrival for o in result.outcomes if o.tenant == "quiet" and o.status == "ok"]

    with_reserve = quiet_waits()
    without = quiet_waits(reserve_slots=0, reserve_fraction=0.0)
    assert len(with_reserve) == len(without) == 8
    # The first one finds every slot taken by the tenant that was alone (work-conserving); from then on the last
    # slot is held for the quiet tenant while it is active.
    assert max(with_reserve[1:]) == 0.0
    assert sum(wait > 0.05 for wait in without[1:]) >= 5, without  # mostly behind a running noisy request
