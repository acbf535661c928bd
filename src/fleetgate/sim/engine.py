"""The engine model: vLLM V1's scheduler loop (continuous batching, chunked prefill, preemption) over a paged KV."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from fleetgate.sim.kvcache import ROOT_HASH, BlockPool, chain_hashes
from fleetgate.sim.lora import LoraRegistry
from fleetgate.sim.profiles import Profile
from fleetgate.sim.slots import SlotCache
from fleetgate.sim.text import TextGenerator, piece_id


class Clock(Protocol):
    """Model time in seconds."""

    def now(self) -> float:
        """The current model time."""
        ...


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        """The current fake time."""
        return self.t

    def advance(self, dt: float) -> None:
        """Move time forward."""
        self.t += dt


class Status(Enum):
    """Where a sequence is."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# listener(seq, new text pieces, finish reason or None): how the server hears about tokens
Listener = Callable[["Sequence", list[str], str | None], None]


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    rid: str
    prompt: list[int]
    max_tokens: int
    generator: TextGenerator
    arrival: float
    adapter: str | None = None
    salt: str | None = None
    ignore_eos: bool = False
    listener: Listener | None = None
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    registered: int = 0  # how many of `blocks` are in the pool's hash map
    num_cached_tokens: int = -1  # prefix hit at first admission (usage.prompt_tokens_details.cached_tokens)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    slot: int = -1  # `slots` prefix cache: the slot the sequence runs in

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt) + len(self.output_ids)

    def ensure_hashes(self, block_size: int, full_blocks: int) -> None:
        """Extend the block-hash chain to `full_blocks` full blocks."""
        if len(self.hashes) >= full_blocks:
            return
        tokens = self.prompt + self.output_ids if self.output_ids else self.prompt
        parent = self.hashes[-1] if self.hashes else ROOT_HASH
        more = chain_hashes(
            tokens[: full_blocks * block_size],
            block_size,
            adapter=self.adapter,
            salt=self.salt,
            start=len(self.hashes),
            parent=parent,
        )
        self.hashes.extend(more)


@dataclass
class Step:
    """One forward pass: who runs how many tokens, and what it costs in model time."""

    entries: list[tuple[Sequence, int]]
    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    lora_loads: list[str]
    duration: float
    started: float


@dataclass
class EngineStats:
    """Counters in vLLM's units (tokens), readable by tests without Prometheus."""

    steps: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class Observer(Protocol):
    """Hooks for metrics."""

    def on_step(self, engine: Engine, step: Step) -> None:
        """After a step's results are applied."""

    def on_first_token(self, seq: Sequence) -> None:
        """When a sequence gets its first token."""

    def on_token(self, seq: Sequence, itl: float) -> None:
        """For every later token, with the inter-token latency."""

    def on_finish(self, seq: Sequence) -> None:
        """When a sequence finishes (stop, length or abort)."""


class Engine:
    """Waiting queue, running batch, block pool and LoRA registry, advanced one step at a time."""

    def __init__(
        self, profile: Profile, clock: Clock, *, lora: LoraRegistry | None = None, observer: Observer | None = None
    ) -> None:
        self.profile = profile
        self.clock = clock
        self.block_size = profile.block_size
        # vLLM refuses to start if one max-length sequence cannot fit; the simulator shrinks the limit instead
        self.max_model_len = min(profile.max_model_len, profile.kv_blocks * profile.block_size)
        # `blocks`: vLLM's shared, hash-addressed blocks; `slots`: llama.cpp's per-slot prompt reuse (no sharing)
        self.slots = (
            SlotCache(
                profile.max_num_seqs,
                profile.slot_prompt_similarity,
                profile.prompt_cache_tokens,
                profile.cache_idle_slots,
            )
            if profile.prefix_cache == "slots"
            else None
        )
        self.pool = BlockPool(profile.kv_blocks, enable_caching=self.slots is None)
        self.lora = lora or LoraRegistry(profile.max_loras)
        self.observer = observer
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = EngineStats()
        self.slow_factor = 1.0  # fault: multiplies the decode part of every step

    def has_work(self) -> bool:
        """True while any sequence waits or runs."""
        return bool(self.running or self.waiting)

    def add(self, seq: Sequence) -> None:
        """Queue a validated request."""
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Client went away: finish as `abort` and free its blocks now."""
        if seq.status is not Status.FINISHED:
            self._finish(seq, "abort")

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _preempt(self, seq: Sequence) -> None:
        # vLLM V1 recompute preemption: blocks go back (their hashes stay cached), the request re-queues first
        self.running.remove(seq)
        self.pool.free(seq.blocks[::-1])
        self._release_slot(seq)
        seq.blocks, seq.registered, seq.num_computed = [], 0, 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def schedule(self) -> Step | None:
        """Plan the next step (vLLM's Scheduler.schedule): running first, then admit from the waiting queue."""
        budget = self.profile.max_num_batched_tokens
        entries: list[tuple[Sequence, int]] = []
        loras: set[str] = set()
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            need = self._blocks_for(seq.num_computed + n) - len(seq.blocks)
            while need > self.pool.num_free and self.running[-1] is not seq:
                self._preempt(self.running[-1])
                preempted = True
            if need > self.pool.num_free:
                self._preempt(seq)
                preempted = True
                continue
            if need > 0:
                new = self.pool.allocate(need)
                assert new is not None  # checked above
                seq.blocks.extend(new)
            entries.append((seq, n))
            budget -= n
            if seq.adapter:
                loras.add(seq.adapter)
            i += 1
        if not preempted:
            budget = self._admit(entries, loras, budget)
        if not entries:
            return None
        return self._cost(entries, loras)

    def _admit(self, entries: list[tuple[Sequence, int]], loras: set[str], budget: int) -> int:
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.profile.max_num_seqs:
            seq = self.waiting[0]
            if seq.adapter and seq.adapter not in loras and len(loras) >= self.lora.max_loras:
                skipped.append(self.waiting.popleft())  # a batch holds at most max_loras adapters
                continue
            if self.slots is not None:
                hit, hit_tokens = [], self._take_slot(seq)
            else:
                # a hit is whole blocks only, and never the last prompt token (it must be computed for logits)
                self.ensure_hashes_for_prompt(seq)
                hit = self.pool.longest_hit(seq.hashes, (seq.num_tokens - 1) // self.block_size)
                hit_tokens = len(hit) * self.block_size
            n = min(seq.num_tokens - hit_tokens, budget)
            need = self._blocks_for(hit_tokens + n) - len(hit)
            free_hits = sum(1 for b in hit if self.pool.is_free(b))
            if need > self.pool.num_free - free_hits:
                self._release_slot(seq, keep=False)
                break  # KV full: the request keeps waiting until blocks free up
            self.pool.touch(hit)
            new = self.pool.allocate(need)
            assert new is not None
            seq.blocks, seq.registered, seq.num_computed = hit + new, len(hit), hit_tokens
            self.stats.prefix_queries += seq.num_tokens
            self.stats.prefix_hits += hit_tokens
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = hit_tokens
            if seq.scheduled_at is None:
                seq.scheduled_at = self.clock.now()
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            entries.append((seq, n))
            budget -= n
            if seq.adapter:
                loras.add(seq.adapter)
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _take_slot(self, seq: Sequence) -> int:
        """Claim the slot llama-server would pick; the tokens it already holds (llama.cpp's n_past)."""
        assert self.slots is not None
        seq.slot, reused = self.slots.take(seq.prompt + seq.output_ids if seq.output_ids else seq.prompt)
        return reused

    def _release_slot(self, seq: Sequence, keep: bool = True) -> None:
        """The slot keeps what the sequence computed (prompt and answer minus the last sampled token)."""
        if self.slots is None or seq.slot < 0:
            return
        self.slots.release(seq.slot, (seq.prompt + seq.output_ids)[: seq.num_computed], self.clock.now(), keep)
        seq.slot = -1

    def ensure_hashes_for_prompt(self, seq: Sequence) -> None:
        """Hash every full block of what the sequence holds so far (prompt, and output after a preemption)."""
        seq.ensure_hashes(self.block_size, seq.num_tokens // self.block_size)

    def _cost(self, entries: list[tuple[Sequence, int]], loras: set[str]) -> Step:
        prefill = decode = context = 0
        for seq, n in entries:
            if seq.num_computed >= len(seq.prompt) and n == 1:
                decode += 1
                context += seq.num_computed + 1
            else:
                prefill += n
        loads = [name for name in sorted(loras) if not self.lora.is_resident(name)]
        for name in loras:
            self.lora.make_resident(name)
        p = self.profile
        decode_s = p.step_seconds(prefill_tokens=0, decode_seqs=decode, context_tokens=context)
        duration = decode_s * self.slow_factor + prefill / p.prefill_tokens_per_s + p.lora_load_s * len(loads)
        return Step(entries, prefill, decode, context, loads, duration, self.clock.now())

    def complete(self, step: Step) -> None:
        """Apply a finished step: KV computed, full blocks cached, one new token per sequence that caught up."""
        now = self.clock.now()
        self.stats.steps += 1
        for seq, n in step.entries:
            if seq.status is not Status.RUNNING:
                continue  # aborted or preempted while the step ran
            seq.num_computed += n
            self._register_full_blocks(seq)
            if seq.num_computed == seq.num_tokens:
                self._sample(seq, now)
        if self.observer is not None:
            self.observer.on_step(self, step)

    def _register_full_blocks(self, seq: Sequence) -> None:
        full = seq.num_computed // self.block_size
        if full <= seq.registered:
            return
        seq.ensure_hashes(self.block_size, full)
        for j in range(seq.registered, full):
            self.pool.cache(seq.blocks[j], seq.hashes[j])
        seq.registered = full

    def _sample(self, seq: Sequence, now: float) -> None:
        piece = seq.generator.next_piece()
        first = not seq.output_ids
        seq.output_ids.append(piece_id(piece))
        seq.output_text.append(piece)
        self.stats.generation_tokens += 1
        if first:
            seq.first_token_at = now
            # vLLM counts a request's prompt tokens (cached ones included) when its prefill completes
            self.stats.prompt_tokens += len(seq.prompt)
            self.stats.prompt_tokens_cached += max(seq.num_cached_tokens, 0)
            if self.observer is not None:
                self.observer.on_first_token(seq)
        elif self.observer is not None and seq.last_token_at is not None:
            self.observer.on_token(seq, now - seq.last_token_at)
        seq.last_token_at = now
        finish: str | None = None
        out = len(seq.output_ids)
        if out >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            finish = "length"
        elif not seq.ignore_eos and out >= seq.generator.natural_length:
            finish = "stop"
        if seq.listener is not None:
            seq.listener(seq, [piece], finish)
        if finish is not None:
            self._finish(seq, finish)

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self.pool.free(seq.blocks[::-1])
        self._release_slot(seq)
        seq.blocks = []
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        seq.finished_at = self.clock.now()
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        if self.observer is not None:
            self.observer.on_finish(seq)

    def reset_prefix_cache(self) -> bool:
        """Drop all cached hashes if no block is in use."""
        return self.pool.reset()


def run_until_idle(engine: Engine, clock: FakeClock, max_steps: int = 100_000) -> int:
    """Drive an engine on a fake clock until nothing waits or runs; returns the number of steps."""
    steps = 0
    while engine.has_work() and steps < max_steps:
        step = engine.schedule()
        if step is None:
            break
        clock.advance(step.duration)
        engine.complete(step)
        steps += 1
    return steps
