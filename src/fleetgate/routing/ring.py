"""Consistent hashing with virtual nodes: a session maps to one replica; a replica leaving moves only its sessions."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable
from hashlib import blake2b


def stable_hash(key: str) -> int:
    """64-bit hash that is the same in every gateway process (builtin hash() is salted per process)."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A ring of `vnodes` points per replica; a key belongs to the first point clockwise from its hash."""

    def __init__(self, replica_ids: Iterable[str], vnodes: int = 100) -> None:
        points = sorted((stable_hash(f"{rid}#{i}"), rid) for rid in set(replica_ids) for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [rid for _, rid in points]

    def owner(self, key: str) -> str | None:
        """The replica the key maps to (None on an empty ring)."""
        if not self._hashes:
            return None
        i = bisect.bisect(self._hashes, stable_hash(key))
        return self._owners[i % len(self._owners)]


class RingCache:
    """Rings by candidate set: membership changes (health, breakers) are rare, building a ring is not free."""

    def __init__(self, vnodes: int = 100, size: int = 16) -> None:
        self.vnodes = vnodes
        self._size = size
        self._rings: OrderedDict[frozenset[str], HashRing] = OrderedDict()

    def owner(self, key: str, replica_ids: Iterable[str]) -> str | None:
        """The owner of `key` on the ring of exactly these replicas."""
        return self.owner_in(key, frozenset(replica_ids))

    def owner_in(self, key: str, members: frozenset[str]) -> str | None:
        """`owner` for a ready-made member set (its hash is cached by the frozenset)."""
        ring = self._rings.get(members)
        if ring is None:
            ring = self._rings[members] = HashRing(members, self.vnodes)
            if len(self._rings) > self._size:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(members)
        return ring.owner(key)
