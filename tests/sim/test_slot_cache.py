"""The `slots` prefix cache (llama-server's): per-slot reuse and the host-RAM prompt cache, hand-computed cases."""

from __future__ import annotations

from fleetgate.sim.engine import Engine, FakeClock, Sequence, run_until_idle
from tests.sim.helpers import make_engine, submit, tokens


def slots_engine(slots: int = 2, cache: int = 0, similarity: float = 0.1) -> tuple[Engine, FakeClock]:
    """`slots` slots, 4-token blocks, llama.cpp's reuse rule with `--slot-prompt-similarity similarity`, a prompt
    cache of `cache` tokens (0: none)."""
    return make_engine(
        prefix_cache="slots", max_num_seqs=slots, prompt_cache_tokens=cache, slot_prompt_similarity=similarity
    )


def serve(engine: Engine, clock: FakeClock, prompt: list[int], max_tokens: int = 4) -> Sequence:
    """Run one request to the end, alone."""
    seq = submit(engine, clock, prompt, max_tokens=max_tokens)
    run_until_idle(engine, clock)
    return seq


def test_a_repeated_prompt_reuses_every_token_but_the_last_not_whole_blocks() -> None:
    engine, clock = slots_engine()
    prompt = tokens(10)  # 2 full 4-token blocks and 2 tokens
    assert serve(engine, clock, prompt).num_cached_tokens == 0
    assert serve(engine, clock, prompt).num_cached_tokens == 9  # the blocks engine would say 8


def test_a_follow_up_reuses_the_prompt_and_the_answer_but_its_last_token() -> None:
    engine, clock = slots_engine()
    first = serve(engine, clock, tokens(10), max_tokens=4)
    follow = first.prompt + first.output_ids + tokens(3, start=900)
    # the slot computed the prompt and 3 of the 4 answer tokens (the last one was sampled, never decoded)
    assert serve(engine, clock, follow).num_cached_tokens == 10 + 3


def test_a_similar_prompt_takes_over_the_slot_and_the_old_history_is_lost() -> None:
    engine, clock = slots_engine(cache=10_000)
    system = tokens(20, start=100)
    a = serve(engine, clock, system + tokens(5, start=500))  # lands in one slot
    b = serve(engine, clock, tokens(25, start=700))  # unrelated: the other (least recently used) slot
    assert engine.slots is not None and b.num_cached_tokens == 0
    assert sorted(s.tokens[0] for s in engine.slots.slots) == [100, 700]
    # same system prompt, another conversation: the most similar slot (a's) is taken and overwritten
    c = serve(engine, clock, system + tokens(5, start=600))
    assert c.num_cached_tokens == 20
    follow_a = a.prompt + a.output_ids + tokens(2, start=800)
    # b's launch saved idle a to the prompt cache (--cache-idle-slots), but c kept 20 of a's 28 tokens (over half)
    # and follow_a keeps over half of c's: the cache is never searched, so a's history is out of reach
    assert a.prompt + a.output_ids[:3] in list(engine.slots.cache)
    assert serve(engine, clock, follow_a).num_cached_tokens == 20
    assert engine.slots.loads == 0


def test_similarity_zero_searches_the_prompt_cache_and_the_history_survives() -> None:
    """`--slot-prompt-similarity 0` (how fleetgate starts llama-server): the same three requests as above, but every
    request takes the least recently used slot and searches the prompt cache, where idle slots were saved."""
    engine, clock = slots_engine(cache=10_000, similarity=0)
    system = tokens(20, start=100)
    a = serve(engine, clock, system + tokens(5, start=500))
    serve(engine, clock, tokens(25, start=700))  # a's slot is idle when this one starts: saved
    c = serve(engine, clock, system + tokens(5, start=600))  # least recently used slot (a's): still the system
    assert c.num_cached_tokens == 20
    follow_a = a.prompt + a.output_ids + tokens(2, start=800)
    # the least recently used slot now holds the unrelated prompt; a's whole turn comes back from the cache
    assert serve(engine, clock, follow_a).num_cached_tokens == len(a.prompt) + len(a.output_ids) - 1
    assert engine.slots is not None and engine.slots.loads >= 1


def test_no_similar_slot_means_the_least_recently_used_one() -> None:
    engine, clock = slots_engine()
    serve(engine, clock, tokens(12, start=100))
    serve(engine, clock, tokens(12, start=300))
    serve(engine, clock, tokens(12, start=500))  # evicts the 100s (least recently used)
    assert engine.slots is not None
    assert sorted(s.tokens[0] for s in engine.slots.slots) == [300, 500]
    assert serve(engine, clock, tokens(12, start=300)).num_cached_tokens == 11


def test_blocks_are_not_shared_between_slots() -> None:
    engine, clock = slots_engine()
    prompt = tokens(16)
    one = submit(engine, clock, prompt, max_tokens=8, rid="one")
    step = engine.schedule()
    assert step is not None
    engine.complete(step)  # one runs in a slot
    two = submit(engine, clock, list(prompt), max_tokens=8, rid="two")
    engine.schedule()
    # llama.cpp slots do not share KV: two copies of the prompt's blocks, and no hit for the concurrent twin
    assert two.num_cached_tokens == 0 and not set(one.blocks) & set(two.blocks)


def test_the_prompt_cache_restores_what_an_unrelated_prompt_displaced() -> None:
    engine, clock = slots_engine(slots=1, cache=10_000)
    a = serve(engine, clock, tokens(20, start=100))
    serve(engine, clock, tokens(20, start=300))  # unrelated: the slot's 23 tokens go to the prompt cache
    assert engine.slots is not None and list(engine.slots.cache) == [a.prompt + a.output_ids[:3]]
    follow = a.prompt + a.output_ids + tokens(2, start=900)
    assert serve(engine, clock, follow).num_cached_tokens == 23  # loaded back into the slot
    assert engine.slots.loads == 1 and engine.slots.cache[0][0] == 300  # and the other one saved in its place


def test_without_a_prompt_cache_the_displaced_prompt_is_lost() -> None:
    engine, clock = slots_engine(slots=1, cache=0)
    a = serve(engine, clock, tokens(20, start=100))
    serve(engine, clock, tokens(20, start=300))
    assert serve(engine, clock, a.prompt + a.output_ids).num_cached_tokens == 0


def test_the_prompt_cache_is_bounded_in_tokens_oldest_out() -> None:
    engine, clock = slots_engine(slots=1, cache=30)
    for start in (100, 300, 500):  # each displaces the previous one (23 tokens held each)
        serve(engine, clock, tokens(20, start=start))
    assert engine.slots is not None and [c[0] for c in engine.slots.cache] == [300]  # 100 fell out
