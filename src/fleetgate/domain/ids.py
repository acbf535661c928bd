"""Request ids: UUIDv7 (RFC 9562), time-ordered so ledgers and logs sort by arrival."""

from __future__ import annotations

import random
import time
import uuid


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48-bit Unix milliseconds, version and variant bits, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    # Ids need to be unique, not secret: the PRNG (seeded from the OS at start) avoids a syscall per request.
    rand = random.getrandbits(80)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def request_id() -> str:
    """A fresh request id as text."""
    return str(uuid7())
