"""A routing comparison offline: one workload replayed through the same simulated fleet under each policy."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.config import AdmissionConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.routing.plugins import POLICIES
from fleetgate.sim.fleet import FleetSim, FleetSpec
from fleetgate.sim.profiles import Profile
from fleetgate.sim.report import PolicyReport, summarize
from fleetgate.sim.workload import SimRequest, TraceWorkload


def policy_names(text: str) -> list[str]:
    """The routing policies named in `a,b,c`, each a known one."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if not names or unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown) or '(none)'}; known: {', '.join(sorted(POLICIES))}")
    return names


def router_params(base: Mapping[str, Any], override_json: str | None) -> dict[str, Any]:
    """Routing parameters: `base` (a config's), with a JSON object's keys over them."""
    params = dict(base)
    if override_json is None:
        return params
    try:
        extra = json.loads(override_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--router-params: not JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise ConfigError("--router-params: expected a JSON object")
    params.update(extra)
    return params


def gateway_admission(base: AdmissionConfig, enabled: bool, max_in_flight: int | None) -> AdmissionConfig | None:
    """The gateway's queue and capacity rule as simulated (None: off), with the per-replica allowance given."""
    if not (enabled and base.enabled):
        return None
    if max_in_flight is None:
        return base
    return base.model_copy(update={"max_in_flight_per_replica": max_in_flight})


def read_trace(path: Path, max_tokens: int, profile: Profile, seed: int) -> list[SimRequest]:
    """A recorded trace, read and tokenized once: every policy replays the same arrivals."""
    if not path.is_file():
        raise ConfigError(f"trace {path} does not exist")
    return list(TraceWorkload(path, max_tokens, (profile.output_tokens_min, profile.output_tokens_max), seed))


@dataclass(frozen=True, slots=True)
class Comparison:
    """A fleet of `replicas` x `profile` behind the gateway's router and admission, run once per policy."""

    profile: Profile
    replicas: int
    policies: list[str]
    router_params: dict[str, Any]
    admission: AdmissionConfig | None  # None: no gateway queue and no capacity rule
    scrape_interval: float
    seed: int

    def run(self, workload: Iterable[SimRequest]) -> list[PolicyReport]:
        """One report per policy, in order; `workload` must be re-iterable (a list, or a seeded generator)."""
        return [summarize(FleetSim(self._spec(name)).run(workload)) for name in self.policies]

    def _spec(self, policy: str) -> FleetSpec:
        return FleetSpec(
            profile=self.profile,
            replicas=self.replicas,
            policy=policy,
            router_params=self.router_params,
            admission=self.admission,
            scrape_interval=self.scrape_interval,
            seed=self.seed,
        )
