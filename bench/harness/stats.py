"""Percentiles and the small arithmetic of comparing two measurements (where either may be missing)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def interpolated(values: Sequence[float], q: float) -> float | None:
    """Percentile `q` (0-100) with linear interpolation between the closest ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """Percentile `q` (0-100) by nearest rank on the sorted values; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values present, or None."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values present, or None."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def diff(a: float | None, b: float | None) -> float | None:
    """a - b, or None if either is missing."""
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None if either is missing or b is 0."""
    return None if a is None or not b else a / b


def all_ok(checks: Iterable[bool | None]) -> bool | None:
    """True if every check passed, None if any could not be judged."""
    values = list(checks)
    if any(v is None for v in values):
        return None
    return all(values)


def fmt(v: float | None, spec: str, missing: str = "n/a") -> str:
    """`v` formatted with `spec`, or `missing`."""
    return missing if v is None else format(v, spec)
