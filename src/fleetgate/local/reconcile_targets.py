"""Which replicas `fleetgate usage reconcile` compares, read from the run directory: URL, engine kind and start."""

from __future__ import annotations

import os
from pathlib import Path

from fleetgate.config import EngineEndpoint
from fleetgate.local.launcher import LlamaCppLauncher
from fleetgate.local.rundir import ProcRecord, RunState
from fleetgate.local.vllm_launcher import VllmLauncher
from fleetgate.metering.reconcile import ReplicaTarget


def _started_at(record: ProcRecord) -> float | None:
    # ProcRecord keeps the start time in clock ticks since boot; counters began when the process did.
    if record.start_time is None:
        return None
    try:
        stat = Path("/proc/stat").read_text().splitlines()
        btime = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return btime + record.start_time / os.sysconf("SC_CLK_TCK")


# Local replicas are named after their launcher ("local-0": llama.cpp, "vllm-1": vLLM), which knows their kind.
LAUNCHER_KINDS: dict[str, str] = {
    LlamaCppLauncher.id_prefix: LlamaCppLauncher.kind,
    VllmLauncher.id_prefix: VllmLauncher.kind,
}


def local_kind(record: ProcRecord) -> str:
    """The engine kind of a local replica: recorded with it, else its launcher's (from its id)."""
    recorded = getattr(record, "kind", None)  # for run dirs whose `up` records the kind with each replica
    if isinstance(recorded, str) and recorded:
        return recorded
    return LAUNCHER_KINDS.get((record.id or "").rpartition("-")[0], "openai")  # "openai": ask the engine


def replica_targets(
    state: RunState, engines: list[EngineEndpoint], since: float | None
) -> tuple[list[ReplicaTarget], list[str]]:
    """Every replica of a running stack (and why any is skipped); `since` overrides their starts."""
    targets, skipped = [], []
    for rec in state.replicas:
        start = since if since is not None else _started_at(rec)
        if rec.url is None or rec.id is None or start is None:
            skipped.append(f"{rec.id or rec.pid}: no URL or start time recorded")
            continue
        targets.append(ReplicaTarget(rec.id, rec.url, local_kind(rec), start))
    by_url = {e.url: e for e in engines}
    for index, url in enumerate(state.engines):
        endpoint = by_url.get(url)
        rid = (endpoint.id if endpoint else None) or f"engine-{index}"
        # A kind config does not name ("openai") is asked from the engine; a start not given, from its metrics.
        targets.append(ReplicaTarget(rid, url, endpoint.kind if endpoint else "openai", since))
    return targets, skipped
