"""Continuous batching, the token budget, KV-full waiting, preemption, aborts and LoRA limits."""

from __future__ import annotations

import pytest

from fleetgate.sim.engine import Status, run_until_idle
from fleetgate.sim.lora import LoraRegistry
from fleetgate.sim.protocol import SimApiError
from tests.sim.helpers import make_engine, submit, tokens


def test_token_budget_chunks_prefill_and_decodes_ride_along() -> None:
    engine, clock = make_engine(max_num_batched_tokens=16)
    s1, s2, s3 = (submit(engine, clock, tokens(10, 100 * i), rid=f"s{i}") for i in (1, 2, 3))
    step = engine.schedule()
    assert step is not None
    assert [(s.rid, n) for s, n in step.entries] == [("s1", 10), ("s2", 6)]  # s2 chunked, s3 still waits
    assert step.duration == pytest.approx(
        engine.profile.step_seconds(prefill_tokens=16, decode_seqs=0, context_tokens=0)
    )
    clock.advance(step.duration)
    engine.complete(step)
    assert len(s1.output_ids) == 1 and not s2.output_ids
    step = engine.schedule()
    assert step is not None
    assert [(s.rid, n) for s, n in step.entries] == [("s1", 1), ("s2", 4), ("s3", 10)]
    assert (step.prefill_tokens, step.decode_seqs, step.context_tokens) == (14, 1, 11)
    assert s3.status is Status.RUNNING


def test_max_num_seqs_caps_the_batch_and_a_newcomer_joins_when_one_leaves() -> None:
    engine, clock = make_engine(max_num_seqs=2)
    short = submit(engine, clock, tokens(5), max_tokens=2, rid="short")
    long = submit(engine, clock, tokens(5, 200), max_tokens=20, rid="long")
    late = submit(engine, clock, tokens(5, 300), max_tokens=2, rid="late")
    step = engine.schedule()
    assert step is not None and {s.rid for s, _ in step.entries} == {"short", "long"}
    run_until_idle(engine, clock)
    assert late.scheduled_at is not None and short.finished_at is not None and long.finished_at is not None
    # continuous batching: `late` starts as soon as `short` leaves, long before `long` is done
    assert short.finished_at <= late.scheduled_at < long.finished_at


def test_kv_full_keeps_a_request_waiting_until_blocks_free_up() -> None:
    engine, clock = make_engine(kv_blocks=8)
    first = submit(engine, clock, tokens(20), max_tokens=4, rid="first")  # 5 blocks, 6 by its end
    second = submit(engine, clock, tokens(20, 500), max_tokens=4, rid="second")
    step = engine.schedule()
    assert step is not None and [s.rid for s, _ in step.entries] == ["first"]
    assert (len(engine.running), len(engine.waiting)) == (1, 1)
    run_until_idle(engine, clock)
    assert first.finished_at is not None and second.scheduled_at is not None
    assert second.scheduled_at >= first.finished_at
    assert engine.pool.num_used == 0


def test_growing_sequences_preempt_the_newest_and_all_still_finish() -> None:
    engine, clock = make_engine(kv_blocks=6)
    seqs = [submit(engine, clock, tokens(8, 100 * i), max_tokens=12, rid=f"s{i}") for i in range(2)]
    run_until_idle(engine, clock)
    assert engine.stats.preemptions >= 1
    assert [len(s.output_ids) for s in seqs] == [12, 12]
    assert [s.finish_reason for s in seqs] == ["length", "length"]
    assert engine.pool.num_used == 0


def test_abort_frees_blocks_even_mid_step() -> None:
    engine, clock = make_engine()
    seq = submit(engine, clock, tokens(30), max_tokens=50)
    step = engine.schedule()
    assert step is not None and engine.pool.num_used == 8
    engine.abort(seq)  # the client hung up while the step ran
    assert engine.pool.num_used == 0 and not engine.running
    clock.advance(step.duration)
    engine.complete(step)  # the in-flight step must not resurrect it
    assert seq.status is Status.FINISHED and seq.finish_reason == "abort" and not seq.output_ids
    assert engine.stats.finished == {"abort": 1}


def test_natural_stop_and_length_limit() -> None:
    engine, clock = make_engine()
    stops = submit(engine, clock, tokens(5), max_tokens=50, natural=3, rid="stop")
    capped = submit(engine, clock, tokens(5, 50), max_tokens=2, natural=3, rid="cap")
    run_until_idle(engine, clock)
    assert (stops.finish_reason, len(stops.output_ids)) == ("stop", 3)
    assert (capped.finish_reason, len(capped.output_ids)) == ("length", 2)


def test_one_batch_holds_at_most_max_loras_adapters_and_loading_costs_time() -> None:
    engine, clock = make_engine(max_loras=1)
    for name in ("a", "b"):
        engine.lora.register(name, f"/adapters/{name}")
    a = submit(engine, clock, tokens(5), max_tokens=3, adapter="a", rid="a")
    b = submit(engine, clock, tokens(5, 50), max_tokens=3, adapter="b", rid="b")
    base = submit(engine, clock, tokens(5, 90), max_tokens=3, rid="base")
    step = engine.schedule()
    assert step is not None and [s.rid for s, _ in step.entries] == ["a", "base"]  # b skipped, not blocking
    # one resident slot: registering b evicted a, so this step pays a's load time
    assert step.lora_loads == ["a"]
    no_load = engine.profile.step_seconds(prefill_tokens=10, decode_seqs=0, context_tokens=0)
    assert step.duration == pytest.approx(no_load + engine.profile.lora_load_s)
    run_until_idle(engine, clock)
    assert a.finished_at is not None and b.scheduled_at is not None and b.scheduled_at >= a.finished_at
    assert engine.lora.resident() == ["b"]
    assert base.finish_reason == "length"


def test_lora_registry_answers_like_vllm() -> None:
    reg = LoraRegistry(max_loras=2)
    with pytest.raises(SimApiError) as missing:
        reg.validate_load("x", None, False)
    assert (missing.value.status, missing.value.err_type) == (400, "InvalidUserInput")
    reg.register("x", "/p/x")
    with pytest.raises(SimApiError) as again:
        reg.validate_load("x", "/p/x", False)
    assert again.value.status == 400 and "already been loaded" in again.value.message
    assert reg.validate_load("x", "/p/x2", True) == ("x", "/p/x2")  # load_inplace reloads
    with pytest.raises(SimApiError) as unknown:
        reg.unregister("nope")
    assert (unknown.value.status, unknown.value.err_type) == (404, "NotFoundError")
    for name in ("y", "z"):  # beyond max_loras: vLLM keeps them registered and evicts from its LRU cache
        reg.register(name, f"/p/{name}")
    assert sorted(reg.adapters) == ["x", "y", "z"] and reg.resident() == ["y", "z"]
    reg.unregister("y")
    assert reg.resident() == ["z"]
