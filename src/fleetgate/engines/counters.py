"""An engine's own token counters, as `fleetgate usage reconcile` compares them with the ledger."""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.domain.errors import FleetgateError
from fleetgate.engines.prometheus import sample_values

# The standard process collector's gauge: when the engine's process, and so its counters, started (Unix s).
PROCESS_START = "process_start_time_seconds"


class CountersError(FleetgateError):
    """An engine's metrics lack, or garble, the counters reconcile needs; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Token counters of one engine process since it started."""

    prompt_fresh: int | None  # prompt tokens the engine computed (cached ones excluded), if it tells
    prompt_total: int | None  # prompt tokens including cached ones, if it tells
    completion: int
    started_at: float | None = None  # when the counters began (Unix s), if the engine says


def counter_sums(text: str, wanted: frozenset[str]) -> dict[str, float]:
    """Each wanted sample summed over its label sets (a data-parallel engine's parts are one replica)."""
    try:
        return {name: sum(values) for name, values in sample_values(text, wanted).items()}
    except ValueError as exc:
        raise CountersError(f"unreadable Prometheus text: {exc}") from None


def need(sums: dict[str, float], name: str, hint: str = "") -> int:
    """A counter the reading cannot do without, as a whole number; CountersError naming it when it is missing."""
    if name not in sums:
        raise CountersError(f"/metrics has no {name}{hint}")
    return round(sums[name])


def started_at(sums: dict[str, float]) -> float | None:
    """When the counters began, if the engine exports its process start (vLLM does; llama.cpp does not)."""
    return sums.get(PROCESS_START) or None
