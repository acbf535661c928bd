"""Turning token counts into money: the one function the budget counter and rating both charge with.

Rates are integer micro-units of the currency per 1M tokens, so `tokens x rate` is an exact integer in units of
1e-12 (a millionth of a micro-unit): "exact units" below. Exact amounts add up without drift; they are rounded
(half up) to micro-units only where a person or a counter reads them: a report line, a report total, and the
budget counter, which charges each request the growth of the tenant's rounded month-to-date amount (see
tenancy/gate.py), so its total is the same rounding of the same sum as the invoice's.
"""

from __future__ import annotations

from dataclasses import dataclass

MICROS_PER_UNIT = 1_000_000
TOKENS_PER_PRICE = 1_000_000  # prices are quoted per 1M tokens
EXACT_PER_MICRO = TOKENS_PER_PRICE  # tokens x (micros per 1M tokens) = exact units; this many make a micro-unit


@dataclass(frozen=True, slots=True)
class ModelRate:
    """Prices in micro-units per 1M tokens."""

    input: int
    cached_input: int
    output: int


def token_charge(
    rate: ModelRate, prompt: int, cached: int, completion: int, *, cache_discount: bool = True
) -> tuple[int, int, int]:
    """Fresh input, cached input and output in exact units (see the module docstring).

    Cached tokens beyond the prompt are ignored; without `cache_discount` cached input is charged at the input rate.
    """
    prompt = max(prompt, 0)
    cached = min(max(cached, 0), prompt)
    cached_rate = rate.cached_input if cache_discount else rate.input
    return (prompt - cached) * rate.input, cached * cached_rate, max(completion, 0) * rate.output


def micros(exact: int) -> int:
    """Exact units rounded half up to micro-units (negative amounts round half away from zero)."""
    if exact < 0:
        return -micros(-exact)
    return (exact + EXACT_PER_MICRO // 2) // EXACT_PER_MICRO
