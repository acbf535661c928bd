"""The engine's usage block as every reader sees it: clean counts whatever the engine sent."""

from __future__ import annotations

from typing import Any

import pytest

from fleetgate.domain.usage import Usage, usage_of

BLOCK = {
    "prompt_tokens": 50,
    "completion_tokens": 40,
    "total_tokens": 90,
    "prompt_tokens_details": {"cached_tokens": 8},
}


def test_a_clean_block_is_read_as_sent() -> None:
    assert usage_of(BLOCK) == Usage(prompt=50, cached=8, completion=40)
    assert usage_of({"prompt_tokens": 5, "completion_tokens": 1}) == Usage(5, 0, 1)  # no details: nothing cached


@pytest.mark.parametrize("block", [None, [], "usage", 7, True])
def test_anything_but_an_object_is_no_usage(block: Any) -> None:
    assert usage_of(block) is None


@pytest.mark.parametrize(
    ("value", "counted"),
    [(-3, 0), (True, 0), (False, 0), ("12", 0), ("abc", 0), (None, 0), ([1], 0), ({}, 0), (2.9, 2), (-1.5, 0),
     (float("nan"), 0), (float("inf"), 0), (0, 0), (10**12, 10**12)],
)  # fmt: skip
def test_a_count_an_engine_got_wrong_is_never_negative_or_a_crash(value: Any, counted: int) -> None:
    assert usage_of({"prompt_tokens": value, "completion_tokens": value}) == Usage(counted, 0, counted)
    assert usage_of({"prompt_tokens": 10**13, "prompt_tokens_details": {"cached_tokens": value}}) == Usage(
        10**13, counted, 0
    )


def test_cached_tokens_never_exceed_the_prompt() -> None:
    assert usage_of({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 80}}) == Usage(5, 5, 0)
    assert usage_of({"prompt_tokens": 5, "prompt_tokens_details": "80"}) == Usage(5, 0, 0)
