"""Choosing among scored candidates: the best, ties broken by load, then at random (never always the first)."""

from __future__ import annotations

import random
from collections.abc import Sequence

EPSILON = 1e-9


def best_index(totals: list[float], loads: Sequence[float], rng: random.Random) -> tuple[int, str]:
    """Index of the highest total and, when a tie had to be broken, how (`tie->least_load`, `tie->random`)."""
    top = max(totals)
    if totals.count(top) == 1 and (len(totals) == 1 or sorted(totals)[-2] < top - EPSILON):
        return totals.index(top), ""  # the common case, in C: a unique winner
    tied = [i for i, t in enumerate(totals) if t >= top - EPSILON]
    if len(tied) == 1:
        return tied[0], ""
    low = min(loads[i] for i in tied)
    lightest = [i for i in tied if loads[i] <= low + EPSILON]
    if len(lightest) == 1:
        return lightest[0], "tie->least_load"
    return rng.choice(lightest), "tie->random"


def least_loaded(loads: Sequence[float], rng: random.Random) -> int:
    """Index of the least loaded candidate; equal loads are chosen among at random."""
    low = min(loads)
    lightest = [i for i, load in enumerate(loads) if load <= low + EPSILON]
    return lightest[0] if len(lightest) == 1 else rng.choice(lightest)
