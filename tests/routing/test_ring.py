"""Consistent hashing for sessions: stable, balanced, and minimal movement when membership changes."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.routing.ring import HashRing, RingCache, stable_hash

IDS = [f"r{i}" for i in range(5)]
KEYS = [f"session-{i}" for i in range(3000)]


def test_stable_hash_is_process_independent() -> None:
    assert stable_hash("abc") == 0xD8BB14D833D59559  # blake2b-64: the same in every gateway process
    assert stable_hash("abc") != stable_hash("abd")


def test_same_session_same_replica_and_balanced() -> None:
    ring = HashRing(IDS)
    owners = [ring.owner(k) for k in KEYS]
    assert owners == [HashRing(reversed(IDS)).owner(k) for k in KEYS]  # order of members does not matter
    counts = Counter(owners)
    assert set(counts) == set(IDS)
    assert all(0.12 < n / len(KEYS) < 0.28 for n in counts.values()), counts


def test_removing_a_replica_moves_only_its_sessions() -> None:
    before = HashRing(IDS)
    after = HashRing([i for i in IDS if i != "r2"])
    moved = [k for k in KEYS if before.owner(k) != after.owner(k)]
    assert moved and all(before.owner(k) == "r2" for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before.owner(k) == "r2")


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=8), min_size=2, max_size=8), st.lists(st.text(), max_size=50))
def test_adding_a_replica_moves_sessions_only_to_it(members: set[str], keys: list[str]) -> None:
    newcomer = "new-replica"
    members.discard(newcomer)
    before, after = HashRing(members, vnodes=20), HashRing([*members, newcomer], vnodes=20)
    for key in keys:
        assert after.owner(key) in (before.owner(key), newcomer)


def test_empty_ring_and_cache() -> None:
    assert HashRing([]).owner("x") is None
    cache = RingCache(vnodes=10, size=2)
    assert cache.owner("k", ["a"]) == "a"
    assert cache.owner("k", ["a", "b"]) == HashRing(["a", "b"], vnodes=10).owner("k")
    cache.owner("k", ["c"])
    assert len(cache._rings) == 2  # bounded
