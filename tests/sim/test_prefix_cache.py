"""Prefix caching against hand-computed cases: whole blocks, salts, adapters, LRU eviction."""

from __future__ import annotations

from fleetgate.sim.engine import run_until_idle
from fleetgate.sim.kvcache import ROOT_HASH, BlockPool, block_hash, chain_hashes
from tests.sim.helpers import BS, make_engine, submit, tokens


def test_second_identical_prompt_hits_whole_blocks_but_never_its_last_token() -> None:
    engine, clock = make_engine()
    # 10 tokens: 2 full blocks. 12 tokens: 3 full blocks, but the last token must be computed, so only 2 hit.
    for n, expected_hit in ((10, 8), (12, 8), (13, 12)):
        prompt = tokens(n, start=1000 * n)
        first = submit(engine, clock, prompt)
        run_until_idle(engine, clock)
        second = submit(engine, clock, prompt)
        run_until_idle(engine, clock)
        assert (first.num_cached_tokens, second.num_cached_tokens) == (0, expected_hit)
    assert engine.stats.prefix_queries == 2 * (10 + 12 + 13)
    assert engine.stats.prefix_hits == 8 + 8 + 12


def test_a_shared_prefix_hits_up_to_the_first_differing_block() -> None:
    engine, clock = make_engine()
    system = tokens(9)  # 2 full blocks + 1 token
    submit(engine, clock, system + tokens(6, start=500))
    run_until_idle(engine, clock)
    other = submit(engine, clock, system + tokens(6, start=900))
    run_until_idle(engine, clock)
    assert other.num_cached_tokens == 8  # block 3 mixes the shared token with different ones


def test_cache_salt_isolates_and_the_same_salt_hits() -> None:
    engine, clock = make_engine()
    prompt = tokens(17)
    hits = []
    for salt in ("tenant-a", "tenant-b", None, "tenant-a", None):
        seq = submit(engine, clock, prompt, salt=salt)
        run_until_idle(engine, clock)
        hits.append(seq.num_cached_tokens)
    assert hits == [0, 0, 0, 16, 16]


def test_salt_enters_only_the_first_block_and_the_adapter_every_block() -> None:
    # vLLM's generate_block_hash_extra_keys: salt when start_token_idx == 0, LoRA name always
    t = tokens(12)
    salted = chain_hashes(t, BS, adapter=None, salt="s")
    assert salted[0] == block_hash(ROOT_HASH, t[0:4], ("s",))
    assert salted[1] == block_hash(salted[0], t[4:8], None)
    assert salted[0] != chain_hashes(t, BS, adapter=None, salt=None)[0]
    lora = chain_hashes(t, BS, adapter="ad", salt="s")
    assert lora[0] == block_hash(ROOT_HASH, t[0:4], ("ad", "s"))
    assert lora[2] == block_hash(lora[1], t[8:12], ("ad",))


def test_adapter_requests_do_not_share_the_base_models_blocks() -> None:
    engine, clock = make_engine()
    engine.lora.register("ad", "/adapters/ad")
    prompt = tokens(13)
    submit(engine, clock, prompt)
    run_until_idle(engine, clock)
    with_adapter = submit(engine, clock, prompt, adapter="ad")
    run_until_idle(engine, clock)
    again = submit(engine, clock, prompt, adapter="ad")
    run_until_idle(engine, clock)
    assert (with_adapter.num_cached_tokens, again.num_cached_tokens) == (0, 12)


def test_lru_evicts_the_least_recently_freed_blocks_first() -> None:
    engine, clock = make_engine(kv_blocks=8)
    a, b, c = tokens(9, 100), tokens(9, 200), tokens(17, 300)
    for prompt in (a, b):  # each caches 2 full blocks and leaves 3 free blocks behind
        submit(engine, clock, prompt, max_tokens=1)
        run_until_idle(engine, clock)
    submit(engine, clock, c, max_tokens=1)  # needs 5 of the 8 blocks: evicts A's, keeps B's
    run_until_idle(engine, clock)
    assert engine.pool.evictions == 2
    b_again = submit(engine, clock, b, max_tokens=1)
    run_until_idle(engine, clock)
    a_again = submit(engine, clock, a, max_tokens=1)
    run_until_idle(engine, clock)
    assert (b_again.num_cached_tokens, a_again.num_cached_tokens) == (8, 0)


def test_block_pool_keeps_a_sequences_prefix_longest() -> None:
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert blocks == [0, 1, 2]
    for i, b in enumerate(blocks):
        pool.cache(b, 1000 + i)
    pool.free(blocks[::-1])  # tail: 2, 1, 0 -> block 0 (the prefix) is evicted last
    assert pool.allocate(2) == [3, 2]
    assert pool.longest_hit([1000, 1001, 1002], 3) == [0, 1]
    assert pool.usage() == 0.5
    assert not pool.reset()  # refused while blocks are referenced
