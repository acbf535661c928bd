"""`fleetgate simulate`'s logic: which policies, routing parameters and admission a comparison runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.config import AdmissionConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.sim.profiles import load_profile
from fleetgate.sim.scenario import Comparison, gateway_admission, policy_names, read_trace, router_params
from fleetgate.sim.workload import ChatWorkload


def test_policy_names_are_checked() -> None:
    assert policy_names(" prefix, ,round_robin ") == ["prefix", "round_robin"]
    with pytest.raises(ConfigError, match=r"unknown policy nope; known: .*round_robin"):
        policy_names("prefix,nope")
    with pytest.raises(ConfigError, match=r"unknown policy \(none\)"):
        policy_names(" , ")


def test_router_params_override_the_configs() -> None:
    base = {"imbalance_abs": 4, "kv_weight": 1.0}
    assert router_params(base, None) == base and router_params(base, None) is not base
    assert router_params(base, '{"imbalance_abs": 8}') == {"imbalance_abs": 8, "kv_weight": 1.0}
    with pytest.raises(ConfigError, match="--router-params: not JSON"):
        router_params(base, "{imbalance")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        router_params(base, "[1]")


def test_gateway_admission_is_off_unless_enabled_on_both_sides() -> None:
    base = AdmissionConfig()
    assert gateway_admission(base, True, None) is base
    assert gateway_admission(base, False, 3) is None
    assert gateway_admission(base.model_copy(update={"enabled": False}), True, 3) is None
    allowed = gateway_admission(base, True, 3)
    assert allowed is not None and allowed.max_in_flight_per_replica == 3


def test_a_missing_trace_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.jsonl does not exist"):
        read_trace(tmp_path / "missing.jsonl", 64, load_profile("h100-llama3-8b"), 0)


def test_a_comparison_runs_the_same_workload_once_per_policy_in_order() -> None:
    comparison = Comparison(
        profile=load_profile("h100-llama3-8b"),
        replicas=2,
        policies=["score", "round_robin"],
        router_params={},
        admission=None,
        scrape_interval=1.0,
        seed=0,
    )
    reports = comparison.run(ChatWorkload(requests=60, rate=10.0, tenants=2, seed=1))
    assert [r.policy for r in reports] == ["score", "round_robin"]
    assert [r.offered for r in reports] == [60, 60]
