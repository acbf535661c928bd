"""The engine's OpenAI `usage` block, read once, where it arrives, into the counts metering, limits and metrics
all take."""

from __future__ import annotations

from math import isfinite
from typing import Any, NamedTuple


class Usage(NamedTuple):
    """Token counts an engine reported for one request; `cached` never exceeds `prompt`."""

    prompt: int
    cached: int
    completion: int


def usage_of(block: Any) -> Usage | None:
    """The counts in an OpenAI `usage` block, or None when `block` is not one (absent or not an object).

    An engine is not trusted to send clean numbers: a count that is not a non-negative number (a string, a bool,
    null, a negative or non-finite value) counts as 0, a fraction is truncated, and cached tokens beyond the prompt
    are not counted, so no reader can bill, limit or plot a negative or inflated amount.
    """
    if not isinstance(block, dict):
        return None
    # The usual case (clean non-negative ints) costs a type check each; anything else goes through `_count`.
    prompt = block.get("prompt_tokens")
    if type(prompt) is not int or prompt < 0:
        prompt = _count(prompt)
    completion = block.get("completion_tokens")
    if type(completion) is not int or completion < 0:
        completion = _count(completion)
    details = block.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return _new_usage(Usage, (prompt, cached if cached <= prompt else prompt, completion))


_new_usage = tuple.__new__  # skips NamedTuple's Python-level __new__: this runs once per request

NO_USAGE = Usage(0, 0, 0)  # a request no engine served: nothing to bill, limit or plot


def _count(value: Any) -> int:
    # `type() is int` excludes bool, a subclass of int.
    if type(value) is int:
        return value if value > 0 else 0
    if type(value) is float and isfinite(value) and value > 0:
        return int(value)
    return 0
