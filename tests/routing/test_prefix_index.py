"""Prefix index: matching, tenant namespacing, the memory bound with LRU eviction, and aging."""

from __future__ import annotations

import gc
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.routing.prefix_index import BLOCK_BYTES, HOLDER_BYTES, PrefixIndex, PrefixSettings
from tests.routing.helpers import FakeClock

B = 8  # small blocks keep the texts short


def _index(clock: FakeClock | None = None, **kw: float) -> PrefixIndex:
    return PrefixIndex(PrefixSettings(block_chars=B, **kw), clock or FakeClock())  # type: ignore[arg-type]


def test_whole_blocks_only_and_chained() -> None:
    index = _index()
    assert index.hashes("t", "x" * (B - 1)) == []
    a = index.hashes("t", "a" * B + "b" * B + "tail")
    assert len(a) == 2
    # Same second block after a different first block: a different key (keys stand for whole prefixes).
    assert index.hashes("t", "c" * B + "b" * B)[1] != a[1]


def test_match_ratio_per_replica() -> None:
    index = _index()
    system = "S" * (4 * B)
    index.record("t", system + "conversation one.." * 2, "r0")  # 4 + 4 blocks
    index.record("t", system, "r1")
    found = index.match("t", system + "conversation one.." * 2, {"r0", "r1", "r2"})
    assert found == {"r0": 1.0, "r1": 0.5}
    assert index.match("t", system + "conversation one.." * 2, {"r1"}) == {"r1": 0.5}  # only candidates count
    assert index.match("t", "Z" * (4 * B), {"r0", "r1"}) == {}


def test_tenant_namespacing_simple() -> None:
    index = _index()
    text = "shared system prompt, word for word" * 4
    index.record("tenant-a", text, "r0")
    assert index.match("tenant-a", text, {"r0"}) == {"r0": 1.0}
    assert index.match("tenant-b", text, {"r0"}) == {}


@settings(max_examples=100, deadline=None)
@given(
    a_texts=st.lists(st.text(min_size=B, max_size=6 * B), min_size=1, max_size=8),
    b_text=st.text(max_size=6 * B),
)
def test_tenant_a_never_raises_tenant_b(a_texts: list[str], b_text: str) -> None:
    index = _index()
    before = index.match("B", b_text, {"r0", "r1"})
    for i, text in enumerate(a_texts):
        index.record("A", text, f"r{i % 2}")
    index.record("A", b_text, "r0")  # even B's exact prompt, sent by A
    assert index.match("B", b_text, {"r0", "r1"}) == before == {}


def test_budget_bound_and_lru_eviction() -> None:
    clock = FakeClock()
    index = _index(clock, budget_bytes=10 * BLOCK_BYTES)
    for i in range(100):
        index.record("t", f"{i:0{B}d}" * 3, "r0")  # 3 distinct blocks each
        assert index.bytes_used <= 10 * BLOCK_BYTES
    assert len(index) == 10 and index.evicted == 290
    # The newest prompts survive; the oldest are gone.
    assert index.match("t", f"{99:0{B}d}" * 3, {"r0"}) == {"r0": 1.0}
    assert index.match("t", f"{0:0{B}d}" * 3, {"r0"}) == {}


def test_eviction_trims_chains_from_the_tail() -> None:
    index = _index(budget_bytes=10 * BLOCK_BYTES)
    long_prompt = "".join(f"{i:0{B}d}" for i in range(10))
    index.record("t", long_prompt, "r0")
    index.record("t", "y" * (5 * B), "r1")  # 5 more blocks: 5 must go
    # The deepest blocks went first, so the prompt still matches on its first half (not on nothing).
    assert index.match("t", long_prompt, {"r0"}) == {"r0": 0.5}


def test_touching_a_prompt_keeps_it() -> None:
    clock = FakeClock()
    index = _index(clock, budget_bytes=6 * BLOCK_BYTES)
    keep = "k" * (2 * B)
    index.record("t", keep, "r0")
    for i in range(20):
        clock.advance(2)
        index.record("t", keep, "r0")  # in use: stays hot
        index.record("t", f"{i:0{B}d}" * 2, "r1")
        index.record("t", f"{i:0{B}d}" * 2 + "z" * B, "r1")
    assert index.match("t", keep, {"r0"}) == {"r0": 1.0}
    assert index.evicted > 0


def test_rerecording_a_fresh_prefix_adds_only_the_new_blocks() -> None:
    clock = FakeClock()
    index = _index(clock)
    system = "s" * (4 * B)
    index.record("t", system, "r0")
    clock.advance(0.5)  # within the refresh window: the shared prefix is not walked again
    index.record("t", system + "u" * (2 * B), "r0")
    assert len(index) == 6 and index.bytes_used == 6 * BLOCK_BYTES
    assert index.match("t", system + "u" * (2 * B), {"r0"}) == {"r0": 1.0}
    index.record("t", system, "r1")  # another replica: every block gains a holder
    assert index.match("t", system + "u" * (2 * B), {"r0", "r1"}) == {"r0": 1.0, "r1": 4 / 6}


def test_holders_are_accounted() -> None:
    index = _index()
    text = "h" * (2 * B)
    index.record("t", text, "r0")
    index.record("t", text, "r1")
    index.record("t", text, "r1")
    assert index.bytes_used == 2 * (BLOCK_BYTES + HOLDER_BYTES)


def test_aging_stops_counting_and_frees_memory() -> None:
    clock = FakeClock()
    index = _index(clock, ttl=600.0)
    old = "o" * (3 * B)
    index.record("t", old, "r0")
    clock.advance(300)
    index.record("t", old[: 2 * B], "r1")
    clock.advance(301)  # r0's blocks are 601 s old, r1's 301 s
    assert index.match("t", old, {"r0", "r1"}) == {"r1": 2 / 3}
    clock.advance(300)
    assert index.match("t", old, {"r0", "r1"}) == {}
    index.record("t", "n" * B, "r2")  # inserts drop expired blocks from the cold end
    assert len(index) == 1 and index.expired == 3
    assert index.bytes_used == BLOCK_BYTES


def test_real_memory_stays_under_the_budget() -> None:
    """The byte accounting is conservative: tracemalloc sees less than the budget after 10x overfill."""
    budget = 1 << 20
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        index = PrefixIndex(PrefixSettings(budget_bytes=budget))
        ids = [f"replica-{i}" for i in range(8)]
        blocks_that_fit = budget // BLOCK_BYTES
        fed = 0
        i = 0
        while fed < 10 * blocks_that_fit:  # 10x more distinct blocks than fit
            text = f"tenant prompt {i:>114}" * 8  # 8 distinct (chained) 128-char blocks
            hashes = index.hashes(f"t{i % 4}", text)
            index.record_hashes(hashes, ids[i % 8])
            fed += len(hashes)
            i += 1
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert index.evicted >= fed - blocks_that_fit
    assert index.bytes_used <= budget
    assert used <= budget, f"real {used} B > budget {budget} B"
