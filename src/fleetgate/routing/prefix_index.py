"""Approximate prefix index: which replica recently saw which prompt prefix, per tenant, under one memory budget.

A prompt is cut into fixed-size blocks of characters; block i's key is a hash chained over blocks 0..i and
seeded with the tenant id, so a key stands for a whole prefix and one tenant's keys never equal another's
(tenant B's lookups only ever touch B's keys: no score, and no timing difference, comes from A's prompts; A's
volume can still push B's cold blocks out of the shared budget, a capacity effect that reveals no content).
Keys live in one LRU (an OrderedDict) with per-replica last-seen times; inserts evict from the cold end until the
accounted size fits the budget, and entries older than the TTL stop counting, as the engine has likely
evicted them too. Lookup and insert cost O(blocks of the prompt), never O(index).

Why 128-character blocks (~32 tokens at ~4 characters a token): every block costs a hash, a lookup and an
insert on each decision plus ~360 B of index, and bench/router_micro.py measures a decision with 64-character
blocks ~1.5x slower at the median (~1.8x at p99) for no routing gain: the ratio's resolution is already ~3% of
a 4,000-character prompt, far finer than any scorer weight can use, and engines reuse at 16 (vLLM GPU), 128
(vLLM CPU here) or 1 (llama.cpp, SGLang) tokens, so no block size matches them all. Prompts shorter than one
block are not indexed: they are cheap to prefill anywhere.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from fleetgate.routing.params import param, parameters

# Accounted bytes, conservative against tracemalloc (bench/router_micro.py and tests/routing check them): an
# OrderedDict slot with its node and int key plus a one-entry holder dict and its float is <= 360 B at any fill;
# each further holder adds a float and, past five, a bigger dict.
BLOCK_BYTES = 400
HOLDER_BYTES = 64
_EXPIRE_PER_INSERT = 8  # expired entries dropped from the cold end per insert: amortised, never a sweep
_REFRESH = 1.0  # seconds within which re-recording a block for the same replica is skipped (LRU is approximate)


@dataclass(frozen=True, slots=True)
class PrefixSettings:
    """Shape and bounds of the index."""

    block_chars: int = 128
    budget_bytes: int = 64 * 1024 * 1024
    ttl: float = 600.0
    max_blocks: int = 512  # blocks hashed per prompt (32k characters): bounds a decision's cost

    def __post_init__(self) -> None:
        if self.block_chars < 1 or self.max_blocks < 1:
            raise ValueError("prefix block_chars and max_blocks must be >= 1")
        if self.budget_bytes < BLOCK_BYTES + HOLDER_BYTES or self.ttl <= 0:
            raise ValueError("prefix budget must hold at least one block and ttl must be > 0")


@parameters
class PrefixParams:
    """The index as configured under `routing.params.prefix` (the budget in MiB)."""

    block_chars: int = param(128, ge=1)  # characters per block (why 128: see the module docstring)
    budget_mb: float = param(64.0, gt=0)  # memory the whole index may take, every tenant and replica together
    ttl: float = param(600.0, gt=0)  # seconds after which a block stops counting (the engine has likely evicted it)
    max_blocks: int = param(512, ge=1)  # blocks hashed per prompt: bounds a decision's cost

    def __post_init__(self) -> None:
        self.settings()  # the budget must hold one block

    def settings(self) -> PrefixSettings:
        """The index's settings."""
        budget = int(self.budget_mb * 1024 * 1024)
        return PrefixSettings(self.block_chars, budget, self.ttl, self.max_blocks)


class PrefixIndex:
    """Per-replica prefix blocks, namespaced by tenant, bounded by one global byte budget."""

    def __init__(self, settings: PrefixSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or PrefixSettings()
        self._clock = clock
        self._blocks: OrderedDict[int, dict[str, float]] = OrderedDict()
        self.bytes_used = 0
        self.evicted = 0  # blocks dropped for the budget
        self.expired = 0  # blocks dropped because every holder was older than the TTL

    def __len__(self) -> int:
        return len(self._blocks)

    def hashes(self, tenant: str, text: str) -> list[int]:
        """Chained block keys of a prompt; only whole blocks count (a partial tail changes as a chat grows)."""
        size = self.settings.block_chars
        n = min(len(text) // size, self.settings.max_blocks)
        h = hash(("fleetgate-prefix", tenant))
        out: list[int] = []
        append = out.append
        # builtin hash: str hashing is SipHash keyed per process, so tenants cannot aim collisions, and it costs
        # ~60 ns a block against ~600 ns for blake2b. A shared (cross-process) index would need a keyed blake2b.
        for start in range(0, n * size, size):
            h = hash((h, text[start : start + size]))
            append(h)
        return out

    def match_hashes(self, hashes: Sequence[int], candidates: Collection[str]) -> dict[str, float]:
        """For each candidate that holds a prefix of these blocks: the matched share of the prompt's blocks."""
        if not hashes:
            return {}
        cutoff = self._clock() - self.settings.ttl
        get = self._blocks.get
        depth: dict[str, int] = {}
        found: list[str] = []  # candidates holding every block so far (fresh)
        prev: dict[str, float] | None = None
        matched = 0
        for h in hashes:
            holders = get(h)
            if holders is None:
                break
            # Consecutive blocks of one recorded prompt carry equal holder maps (same replicas, same times): one
            # C-level comparison then stands in for the per-holder loop.
            if holders != prev:
                now_found = [rid for rid, seen in holders.items() if seen >= cutoff and rid in candidates]
                if not now_found:
                    break  # keys are chained: no candidate can hold a longer prefix
                for rid in found:
                    depth[rid] = matched
                found, prev = now_found, holders
            matched += 1
        for rid in found:
            depth[rid] = matched
        n = len(hashes)
        return {rid: d / n for rid, d in depth.items()}

    def record_hashes(self, hashes: Sequence[int], replica_id: str) -> None:
        """Note that this replica was just sent these blocks; evict cold blocks until the budget holds."""
        if not hashes:
            return
        now = self._clock()
        recent = now - _REFRESH
        blocks = self._blocks
        added = 0
        # Deepest block first, so the prompt's first block ends up hottest: eviction then trims chains from the
        # tail and never leaves a deep block whose prefix is gone (unreachable, yet paid for). The same order
        # lets us stop at the first block this replica was given moments ago: every shallower block was touched
        # then too, so a hot shared prefix (a system prompt) costs nothing per request.
        for h in reversed(hashes):
            holders = blocks.get(h)
            if holders is None:
                blocks[h] = {replica_id: now}
                added += BLOCK_BYTES
                continue
            seen = holders.get(replica_id)
            if seen is None:
                added += HOLDER_BYTES
            elif seen >= recent:
                break
            holders[replica_id] = now
            blocks.move_to_end(h)
        self.bytes_used += added
        self._trim(now)

    def _trim(self, now: float) -> None:
        blocks = self._blocks
        budget = self.settings.budget_bytes
        while self.bytes_used > budget and blocks:
            _, holders = blocks.popitem(last=False)
            self.bytes_used -= BLOCK_BYTES + HOLDER_BYTES * (len(holders) - 1)
            self.evicted += 1
        cutoff = now - self.settings.ttl
        for _ in range(_EXPIRE_PER_INSERT):
            if not blocks:
                break
            h = next(iter(blocks))
            holders = blocks[h]
            if max(holders.values()) >= cutoff:
                break  # the cold end is still alive, so is everything after it
            del blocks[h]
            self.bytes_used -= BLOCK_BYTES + HOLDER_BYTES * (len(holders) - 1)
            self.expired += 1

    def match(self, tenant: str, text: str, candidates: Collection[str]) -> dict[str, float]:
        """`match_hashes` for a prompt text."""
        return self.match_hashes(self.hashes(tenant, text), candidates)

    def record(self, tenant: str, text: str, replica_id: str) -> None:
        """`record_hashes` for a prompt text (the proxy may also record prompt + reply after a turn)."""
        self.record_hashes(self.hashes(tenant, text), replica_id)
