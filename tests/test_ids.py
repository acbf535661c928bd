"""UUIDv7 request ids."""

from __future__ import annotations

import time
import uuid

from fleetgate.domain.ids import request_id, uuid7


def test_uuid7_version_variant_and_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    first, last = ids[0], ids[-1]
    assert first[:8] <= last[:8]
