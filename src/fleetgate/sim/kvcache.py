"""Paged KV cache with vLLM's prefix caching: chained block hashes, ref counts, LRU eviction of free blocks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

ROOT_HASH = 0x9E3779B97F4A7C15  # the parent of a first block (vLLM's NONE_HASH)


def block_hash(parent: int, tokens: Sequence[int], extra: tuple[str, ...] | None) -> int:
    """Hash of one full block: its parent's hash, its token ids and extra keys (LoRA name, cache salt)."""
    # Python's tuple hash is fast and stable within a process, which is all one engine's cache needs
    # (vLLM also salts NONE_HASH per process unless PYTHONHASHSEED is set).
    return hash((parent, tuple(tokens), extra))


def chain_hashes(
    tokens: Sequence[int],
    block_size: int,
    *,
    adapter: str | None,
    salt: str | None,
    start: int = 0,
    parent: int = ROOT_HASH,
) -> list[int]:
    """Hashes of the full blocks of `tokens` from block index `start`, chained like vLLM's."""
    out: list[int] = []
    for i in range(start, len(tokens) // block_size):
        # vLLM (kv_cache_utils.generate_block_hash_extra_keys): the LoRA name goes into every block,
        # the cache salt only into the first; the chain carries the salt into every later block.
        extra: list[str] = [adapter] if adapter else []
        if i == 0 and salt:
            extra.append(salt)
        parent = block_hash(parent, tokens[i * block_size : (i + 1) * block_size], tuple(extra) or None)
        out.append(parent)
    return out


class BlockPool:
    """N blocks; free ones (ref count 0) sit in an LRU queue and keep their hash until reused."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cached: dict[int, int] = {}
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks no sequence references (cached or empty): what allocation can use."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks whose content is findable by hash (in use or free)."""
        return len(self._cached)

    def is_free(self, block: int) -> bool:
        """True if no sequence references the block (it may still hold cached content)."""
        return self._ref[block] == 0

    def usage(self) -> float:
        """vLLM's kv_cache_usage_perc: 1 - free / total (cached-but-free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def longest_hit(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Block ids of the longest cached prefix of `hashes`, at most `max_blocks` long."""
        hit: list[int] = []
        if not self.enable_caching:
            return hit
        for h in hashes[:max_blocks]:
            block = self._cached.get(h)
            if block is None:
                break
            hit.append(block)
        return hit

    def touch(self, blocks: Iterable[int]) -> None:
        """Take a reference on cache-hit blocks, pulling free ones out of the eviction queue."""
        for b in blocks:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks from the LRU head (evicting their cached content), or None if too few are free."""
        if n > len(self._free):
            return None
        out: list[int] = []
        for _ in range(n):
            b, _ = self._free.popitem(last=False)
            h = self._hash[b]
            if h is not None:
                self._hash[b] = None
                if self._cached.get(h) == b:
                    del self._cached[h]
                self.evictions += 1
            self._ref[b] = 1
            out.append(b)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference each; callers pass a sequence's blocks in reverse so its prefix is evicted last."""
        for b in blocks:
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None  # tail: most recently used, evicted last

    def cache(self, block: int, h: int) -> None:
        """Make a full block findable by its hash (the first block registered for a hash wins)."""
        if not self.enable_caching or self._hash[block] is not None:
            return
        self._hash[block] = h
        self._cached.setdefault(h, block)

    def reset(self) -> bool:
        """Forget every cached hash (vLLM's /reset_prefix_cache); refused while blocks are in use."""
        if self.num_used:
            return False
        self._hash = [None] * self.num_blocks
        self._cached.clear()
        return True
