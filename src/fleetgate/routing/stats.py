"""Cheap counters: nanoseconds spent per plugin and decisions per (policy, reason); exported elsewhere."""

from __future__ import annotations


def reason_kind(reason: str) -> str:
    """The bounded part of a reason (`prefix:0.83;fallback=breaker` -> `prefix`), fit for a metric label."""
    return reason.partition(";")[0].partition(":")[0]


class RouterStats:
    """Plain dict counters, updated on the hot path with no locks (one event loop)."""

    def __init__(self) -> None:
        self.timings: dict[str, list[int]] = {}  # plugin -> [calls, total ns]
        self.reasons: dict[tuple[str, str], int] = {}  # (policy, reason kind) -> decisions
        self.fallbacks: dict[str, int] = {}  # filter -> times it would have dropped every candidate

    def time(self, plugin: str, ns: int) -> None:
        """Add one timed call of a plugin."""
        slot = self.timings.get(plugin)
        if slot is None:
            self.timings[plugin] = [1, ns]
        else:
            slot[0] += 1
            slot[1] += ns

    def decision(self, policy: str, reason: str) -> None:
        """Count one decision by its reason kind."""
        key = (policy, reason_kind(reason))
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def fallback(self, filter_name: str) -> None:
        """Count a filter that was skipped because it left nothing."""
        self.fallbacks[filter_name] = self.fallbacks.get(filter_name, 0) + 1

    def snapshot(self) -> dict[str, object]:
        """A JSON-able copy: mean microseconds per plugin, decisions per reason."""
        return {
            "plugins": {
                name: {"calls": calls, "mean_us": round(ns / calls / 1000, 3)}
                for name, (calls, ns) in sorted(self.timings.items())
            },
            "reasons": {f"{p}:{r}": n for (p, r), n in sorted(self.reasons.items())},
            "fallbacks": dict(self.fallbacks),
        }
