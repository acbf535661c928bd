"""Turning token counts into money with a model's price (micro-units, integers: no float drift in counters)."""

from __future__ import annotations

from fleetgate.config import ModelPrice

MICROS_PER_UNIT = 1_000_000
TOKENS_PER_PRICE = 1_000_000  # prices are quoted per 1M tokens


def cost_micros(price: ModelPrice, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
    """Cost in millionths of the currency: fresh input, cached input and output each at their own rate."""
    cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
    fresh = max(prompt_tokens, 0) - cached
    # price per 1M tokens x micros per unit / 1M tokens: the two millions cancel.
    total = fresh * price.input + cached * price.cached_input + max(completion_tokens, 0) * price.output
    return round(total * MICROS_PER_UNIT / TOKENS_PER_PRICE)
