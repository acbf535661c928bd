"""Runs of decode steps applied in bulk: the fleet simulator's shortcut through Engine.schedule/complete.

While every running sequence of an engine decodes and nothing waits that could be admitted, each step of vLLM's
scheduler does the same thing: one token per sequence, a new KV block now and then, and a step time that grows
with the context. A DecodeRun plans those steps up to the first one that finishes a sequence, and apply_run
replays them in the order Engine.schedule and Engine.complete would have (block allocations, then cache
registrations, step by step and sequence by sequence; finishes in batch order), with step times computed in the
same floating-point operations. tests/sim/test_fleet.py checks that runs with and without it are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.sim.engine import Engine, Sequence
from fleetgate.sim.kvcache import chain_hashes
from fleetgate.sim.text import piece_id
from fleetgate.sim.workload import ScriptedText

RUN_CHUNK = 32  # steps timed at a time: most runs are cut short by an arrival long before their end


@dataclass(slots=True, eq=False)
class DecodeRun:
    """Decode steps planned at once: the batch stays the same for `total` steps unless a request arrives."""

    seqs: list[Sequence]
    start: float
    total: int  # steps in the run; the last one finishes at least one sequence (unless the run was cut short)
    context: int  # context tokens of the next step not yet timed
    ends: list[float]  # when each step timed so far ends
    finishes: bool = True
    applied: int = 0  # steps already applied to the engine


def plan_run(engine: Engine, now: float) -> DecodeRun | None:
    """The steps Engine.schedule would plan from `now` while every running sequence decodes, up to and including
    the first step that finishes one.

    None when the next step may differ: a sequence still prefills, a waiting request could be admitted, KV
    blocks could run out (preemption), adapters are in play, or an observer wants every token.
    """
    p = engine.profile
    running = engine.running
    n = len(running)
    if not n or engine.observer is not None or n > p.max_num_batched_tokens:
        return None
    if engine.waiting and n < p.max_num_seqs:
        return None
    left_min = 1 << 62
    context = 0
    limit = engine.max_model_len
    for seq in running:
        out = len(seq.output_ids)
        total = len(seq.prompt) + out
        if not out or seq.num_computed != total - 1 or seq.adapter is not None:
            return None
        # the token that ends it: Engine._sample's checks (max_tokens, context window, natural stop)
        left = seq.max_tokens - out
        if limit - total < left:
            left = limit - total
        if not seq.ignore_eos and seq.generator.natural_length - out < left:
            left = seq.generator.natural_length - out
        if left < left_min:
            left_min = left
        context += total
    bs = engine.block_size
    if sum(-(-(s.num_computed + left_min) // bs) - len(s.blocks) for s in running) > engine.pool.num_free:
        return None
    run = DecodeRun(list(running), now, left_min, context, [])
    extend_run(engine, run)
    return run


def extend_run(engine: Engine, run: DecodeRun) -> None:
    """Time the run's next RUN_CHUNK steps."""
    p, n, ends = engine.profile, len(run.seqs), run.ends
    base, per_seq, per_k, slow = p.decode_base_ms, p.decode_per_seq_ms, p.decode_per_ktoken_ms, engine.slow_factor
    t, context = ends[-1] if ends else run.start, run.context
    for _ in range(min(RUN_CHUNK, run.total - len(ends))):
        # Engine._cost (Profile.step_seconds) for a decode-only batch, in the same float operations and order
        ms = base + per_seq * n + per_k * context / 1000
        t += (ms / 1000.0 + 0 / p.prefill_tokens_per_s) * slow + p.lora_load_s * 0
        ends.append(t)
        context += n
    run.context = context


def apply_run(engine: Engine, run: DecodeRun, upto: int) -> float:
    """Apply the run's steps up to `upto` as Engine.complete would have, one step at a time; returns their time."""
    m = upto - run.applied
    if m <= 0:
        return 0.0
    bs, pool, last = engine.block_size, engine.pool, run.ends[upto - 1]
    blocks: list[tuple[int, int, int, int]] = []  # (step, 0 allocate | 1 register, sequence, its c0): engine order
    for idx, seq in enumerate(run.seqs):
        gen = seq.generator
        if type(gen) is ScriptedText and gen.count + m <= len(gen.pieces):
            a = gen.count
            gen.count = b = a + m
            seq.output_text += gen.pieces[a:b]
            seq.output_ids += gen.ids[a:b]
        else:
            pieces = [gen.next_piece() for _ in range(m)]
            seq.output_text += pieces
            seq.output_ids += [piece_id(x) for x in pieces]
        c0 = seq.num_computed
        first = (-c0) % bs + 1  # the step whose token opens a new block
        if first <= m:
            blocks += [(i, 0, idx, c0) for i in range(first, m + 1, bs)]
        first = (-c0 - 1) % bs + 1  # the step whose token fills one
        if first <= m:
            blocks += [(i, 1, idx, c0) for i in range(first, m + 1, bs)]
            _extend_hashes(seq, bs, (c0 + m) // bs)
        seq.num_computed = c0 + m
        seq.last_token_at = last
    blocks.sort()
    for i, kind, idx, c0 in blocks:
        seq = run.seqs[idx]
        if kind == 0:
            new = pool.allocate(1)
            assert new is not None  # plan_run checked the free blocks
            seq.blocks += new
        else:
            j = (c0 + i) // bs - 1
            pool.cache(seq.blocks[j], seq.hashes[j])
            seq.registered = j + 1
    engine.stats.steps += m
    engine.stats.generation_tokens += m * len(run.seqs)
    if upto == run.total and run.finishes:
        limit = engine.max_model_len
        for seq in run.seqs:  # Engine._sample's finish checks, in batch order as complete() makes them
            out = len(seq.output_ids)
            if out >= seq.max_tokens or seq.num_tokens >= limit:
                engine._finish(seq, "length")
            elif not seq.ignore_eos and out >= seq.generator.natural_length:
                engine._finish(seq, "stop")
    spent = run.ends[upto - 1] - (run.ends[run.applied - 1] if run.applied else run.start)
    run.applied = upto
    return spent


def _extend_hashes(seq: Sequence, bs: int, full: int) -> None:
    """Sequence.ensure_hashes without copying the whole prompt for every new block of the answer."""
    have = len(seq.hashes)
    if full <= have:
        return
    if seq.salt is not None or not have:
        seq.ensure_hashes(bs, full)
        return
    p, lo, hi = len(seq.prompt), have * bs, full * bs
    tokens = seq.output_ids[lo - p : hi - p] if lo >= p else seq.prompt[lo:] + seq.output_ids[: hi - p]
    # block `have` > 0 of the chain: the salt would only enter block 0, the adapter is the same for every block
    seq.hashes += chain_hashes(tokens, bs, adapter=seq.adapter, salt=None, parent=seq.hashes[-1])
