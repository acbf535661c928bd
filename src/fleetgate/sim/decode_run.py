"""Decode batches advanced lazily: the fleet simulator's shortcut through Engine.schedule/complete.

While an engine's running sequences all decode, every step of vLLM's scheduler does the same thing: one token per
sequence, a new KV block now and then, a step time that grows with the context. A DecodeBatch keeps those
sequences as lanes that are brought up to date only when something looks at them, and replays the engine's
work in its order: per step, block allocations in batch order, then cache registrations, then finishes; a
request that arrives joins at the next step boundary through Engine._admit and Engine.complete, as in
Engine.schedule. Anything else (chunked prefill, preemption, adapters, a waiting request that cannot be admitted)
hands the engine back to its own step loop. Step times use the same floating-point operations as
Engine._cost, so results are identical to stepping the engine (tests/sim/test_fleet.py checks it).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

from fleetgate.sim.engine import Engine, Sequence, Status, Step
from fleetgate.sim.kvcache import chain_hashes
from fleetgate.sim.text import piece_id
from fleetgate.sim.workload import ScriptedText

CHUNK = 32  # steps timed at a time when nothing finishes sooner: most stretches end early, at an arrival
ALLOCATE, REGISTER = 0, 1  # block events in a step: the scheduler allocates, then complete() registers
_RANK_BITS = 40  # an event's heap key is (step, kind, rank) packed into one int: cheaper to compare than a tuple


@dataclass(slots=True, eq=False)
class Lane:
    """One decoding sequence; its fields are current as of batch step `mark`."""

    seq: Sequence
    rank: int  # position in the engine's running order (joins append, finishes keep the order)
    mark: int
    base: int  # num_computed - mark: constant while it decodes one token a step
    finish: int  # the batch step whose token ends it


class DecodeBatch:
    """An engine's running decode sequences, stepped lazily between the moments anything can change."""

    def __init__(self, engine: Engine, now: float) -> None:
        self.engine = engine
        self.start = now
        self.done = 0  # steps whose ends have been processed
        self.counted = 0  # steps already added to the engine's step and token counters
        self.horizon = 0  # the step whose end is the next event
        self.ends: list[float] = []  # ends[s - 1]: when batch step s ends (timed up to the horizon)
        self.lanes: dict[Sequence, Lane] = {}
        self.finishes: list[tuple[int, int, Lane]] = []  # heap (finish step, rank, lane)
        self.events: list[tuple[int, Lane]] = []  # heap of (key(step, ALLOCATE | REGISTER, rank), lane)
        self.base_sum = 0  # the context of decode step s is base_sum + len(lanes) * s
        self.mixed: list[tuple[Sequence, int]] | None = None  # requests admitted into step done + 1
        self.at_boundary = False
        self.spent = 0.0  # model seconds of the steps processed so far
        self._rank = 0
        self._fallback = False

    @classmethod
    def enter(cls, engine: Engine, now: float) -> DecodeBatch | None:
        """A batch of the engine's running sequences, if they all decode and nothing needs the full scheduler."""
        running = engine.running
        if not running or engine.observer is not None or len(running) > engine.profile.max_num_batched_tokens:
            return None
        bs = engine.block_size
        for seq in running:
            c = seq.num_computed
            if (
                not seq.output_ids
                or c != seq.num_tokens - 1
                or seq.adapter is not None
                or -(-c // bs) != len(seq.blocks)
                or seq.registered != c // bs
            ):
                return None
        batch = cls(engine, now)
        for seq in running:
            batch._join(seq)
        return batch

    def _join(self, seq: Sequence) -> None:
        bs, mark, c = self.engine.block_size, self.done, seq.num_computed
        out = len(seq.output_ids)
        # the token that ends it: Engine._sample's checks (max_tokens, context window, natural stop)
        left = min(seq.max_tokens - out, self.engine.max_model_len - seq.num_tokens)
        if not seq.ignore_eos:
            left = min(left, seq.generator.natural_length - out)
        lane = Lane(seq, self._rank, mark, c - mark, mark + left)
        self._rank += 1
        self.lanes[seq] = lane
        self.base_sum += lane.base
        heapq.heappush(self.finishes, (lane.finish, lane.rank, lane))
        self._push(mark + 1 + (-c) % bs, ALLOCATE, lane)  # the step whose token opens a new block
        self._push(mark + 1 + (-c - 1) % bs, REGISTER, lane)  # the step whose token fills one

    def _push(self, step: int, kind: int, lane: Lane) -> None:
        if step <= lane.finish:
            heapq.heappush(self.events, ((((step << 1) | kind) << _RANK_BITS) | lane.rank, lane))

    def _end(self, step: int) -> float:
        return self.ends[step - 1] if step else self.start

    def _materialize(self, lane: Lane, step: int) -> None:
        """Bring a lane's sequence up to the end of `step`: its tokens, computed count and last token time."""
        m = step - lane.mark
        if m <= 0:
            return
        seq, gen = lane.seq, lane.seq.generator
        if type(gen) is ScriptedText and gen.count + m <= len(gen.pieces):
            a = gen.count
            gen.count = b = a + m
            seq.output_text += gen.pieces[a:b]
            seq.output_ids += gen.ids[a:b]
        else:
            pieces = [gen.next_piece() for _ in range(m)]
            seq.output_text += pieces
            seq.output_ids += [piece_id(x) for x in pieces]
        seq.num_computed += m
        seq.last_token_at = self._end(step)
        lane.mark = step

    def _process(self, step: int, kind: int) -> None:
        """Apply every block event up to (`step`, `kind`), in the engine's order."""
        events, pool, bs = self.events, self.engine.pool, self.engine.block_size
        limit = (((step << 1) | kind) + 1) << _RANK_BITS
        while events and events[0][0] < limit:
            key, lane = events[0]
            code = key >> _RANK_BITS
            at, seq = code >> 1, lane.seq
            if code & 1 == ALLOCATE:
                new = pool.allocate(1)
                assert new is not None  # start_next checked the free blocks
                seq.blocks += new
            else:
                self._materialize(lane, at)
                j = (lane.base + at) // bs - 1
                _extend_hashes(seq, bs, j + 1)
                pool.cache(seq.blocks[j], seq.hashes[j])
                seq.registered = j + 1
            if at + bs <= lane.finish:  # the same kind of event again one block later
                heapq.heapreplace(events, (key + (bs << (_RANK_BITS + 1)), lane))
            else:
                heapq.heappop(events)

    def _count(self, upto: int) -> None:
        """Add steps up to `upto` to the engine's counters (a mixed step's own count comes from complete())."""
        steps = upto - self.counted
        if steps > 0:
            stats = self.engine.stats
            stats.steps += steps - (1 if self.mixed is not None and upto > self.done else 0)
            stats.generation_tokens += steps * len(self.lanes)
            self.counted = upto

    def boundary(self) -> list[Sequence]:
        """Process the end of the horizon step; returns the sequences that finished in it."""
        s, engine = self.horizon, self.engine
        self.at_boundary = True
        self._process(s, REGISTER)
        self._count(s)
        self.spent += self._end(s) - self._end(self.done)
        finished: list[Sequence] = []
        limit = engine.max_model_len
        while self.finishes and self.finishes[0][0] == s:
            lane = heapq.heappop(self.finishes)[2]
            seq = lane.seq
            self._materialize(lane, s)
            del self.lanes[seq]
            self.base_sum -= lane.base
            out = len(seq.output_ids)
            # Engine._sample's finish, in batch order as complete() reaches them (_sample's own call: abort, the
            # engine's public way to end a sequence, would count it as aborted)
            if out >= seq.max_tokens or seq.num_tokens >= limit:
                engine._finish(seq, "length")
            else:
                engine._finish(seq, "stop")
            finished.append(seq)
        mixed, self.mixed = self.mixed, None
        self.done = s
        if mixed:
            # the requests admitted into this step, after the decoding ones (they come later in the batch)
            engine.complete(Step(mixed, 0, 0, 0, [], self._end(s) - self._end(s - 1), self._end(s - 1)))
            for seq, _ in mixed:
                if seq.status is Status.FINISHED:
                    finished.append(seq)
                elif seq.output_ids and seq.num_computed == seq.num_tokens - 1 and seq.adapter is None:
                    self._join(seq)
                else:
                    self._fallback = True  # still prefilling in chunks: the engine's own loop does that
        return finished

    def start_next(self) -> float | None:
        """Plan from the boundary just processed: the time of the next event, or None to hand back to the engine."""
        self.at_boundary = False
        engine, done, n = self.engine, self.done, len(self.lanes)
        p = engine.profile
        waiting = engine.waiting
        if self._fallback or not n or n > p.max_num_batched_tokens or any(s.adapter for s in waiting):
            self._hand_back()
            return None
        admit = bool(waiting) and n < p.max_num_seqs and n < p.max_num_batched_tokens
        while self.finishes and self.finishes[0][2].seq not in self.lanes:
            heapq.heappop(self.finishes)
        horizon = done + 1 if admit else min(self.finishes[0][0], done + CHUNK)
        if not self._blocks_suffice(horizon):
            self._hand_back()  # a step would run out of KV blocks: the engine preempts
            return None
        del self.ends[done:]
        if admit:
            self._process(done + 1, ALLOCATE)  # the running sequences' blocks come before admissions
            entries: list[tuple[Sequence, int]] = []
            engine._admit(entries, set(), p.max_num_batched_tokens - n)
            if not entries:
                self._hand_back()  # blocked on KV: Engine.schedule retries every step
                return None
            self.mixed = entries
            decode, context, prefill = n, self.base_sum + n * (done + 1), 0
            for seq, k in entries:  # Engine._cost's split of the batch
                if seq.num_computed >= len(seq.prompt) and k == 1:
                    decode += 1
                    context += seq.num_computed + 1
                else:
                    prefill += k
            decode_s = p.step_seconds(prefill_tokens=0, decode_seqs=decode, context_tokens=context)
            duration = decode_s * engine.slow_factor + prefill / p.prefill_tokens_per_s + p.lora_load_s * 0
            self.ends.append(self._end(done) + duration)
        else:
            self._time(horizon)
        self.horizon = horizon
        return self.ends[horizon - 1]

    def _time(self, upto: int) -> None:
        """Step end times up to `upto` for the decode-only batch."""
        p, n, ends = self.engine.profile, len(self.lanes), self.ends
        base, per_seq, per_k = p.decode_base_ms, p.decode_per_seq_ms, p.decode_per_ktoken_ms
        slow = self.engine.slow_factor
        t = self._end(len(ends))
        for s in range(len(ends) + 1, upto + 1):
            # Engine._cost (Profile.step_seconds) for a decode-only batch, in the same float operations and order
            ms = base + per_seq * n + per_k * (self.base_sum + n * s) / 1000
            t += (ms / 1000.0 + 0 / p.prefill_tokens_per_s) * slow + 0 / p.prefill_tokens_per_s + p.lora_load_s * 0
            ends.append(t)

    def _blocks_suffice(self, horizon: int) -> bool:
        """Every block the lanes take through `horizon` is free (so the engine would not preempt)."""
        free, bs = self.engine.pool.num_free, self.engine.block_size
        if len(self.lanes) * ((horizon - self.done) // bs + 1) <= free:
            return True
        return sum(-(-(ln.base + horizon) // bs) - len(ln.seq.blocks) for ln in self.lanes.values()) <= free

    def _hand_back(self) -> None:
        for lane in self.lanes.values():
            self._materialize(lane, self.done)
        self.lanes.clear()
        self.events.clear()
        self.finishes.clear()
        return None

    def arrival(self, now: float) -> float | None:
        """A request was added to the waiting queue: the new horizon's end if it must join sooner, else None."""
        p, n = self.engine.profile, len(self.lanes)
        if self.at_boundary or n >= p.max_num_seqs or n >= p.max_num_batched_tokens:
            return None  # admitted at this boundary, or not before someone finishes
        in_progress = bisect.bisect_right(self.ends, now, lo=self.done) + 1
        if in_progress >= self.horizon:
            return None
        self.horizon = in_progress
        return self.ends[in_progress - 1]

    def sync(self, now: float) -> None:
        """Bring KV blocks and counters to `now` for a scrape (steps ended, and the allocations of the next)."""
        ended = bisect.bisect_right(self.ends, now, lo=self.done)
        self._process(ended + 1, ALLOCATE)
        self._count(ended)


def _extend_hashes(seq: Sequence, bs: int, full: int) -> None:
    """Sequence.ensure_hashes without copying the whole prompt for every new block of the answer."""
    have = len(seq.hashes)
    if full <= have:
        return
    if seq.salt is not None or not have:
        seq.ensure_hashes(bs, full)
        return
    p, lo, hi = len(seq.prompt), have * bs, full * bs
    if lo >= p:
        tokens = seq.output_ids[lo - p : hi - p]
    elif hi <= p:
        tokens = seq.prompt[lo:hi]
    else:
        tokens = seq.prompt[lo:] + seq.output_ids[: hi - p]
    # block `have` > 0 of the chain: the salt would only enter block 0, the adapter is the same for every block
    seq.hashes += chain_hashes(tokens, bs, adapter=seq.adapter, salt=None, parent=seq.hashes[-1])
