"""`routing.params` checked: the router's own keys, weights, the index and breaker sections, each scorer's section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.plugins import SCORERS, make_router
from fleetgate.routing.settings import RoutingParams

EXAMPLE = Path(__file__).parents[2] / "fleetgate.example.yaml"


def _parse(params: dict[str, Any]) -> RoutingParams:
    return RoutingParams.parse(params, SCORERS.sections(), SCORERS.default_weights())


def test_params_are_checked_by_name() -> None:
    checked = _parse(
        {
            "weights": {"prefix": 5},
            "prefix": {"budget_mb": 8, "block_chars": 128},
            "breaker": {"failures": 3},
            "queue": {"scale": 2},
            "vnodes": 7,
        }
    )
    assert checked.weights["prefix"] == 5 and checked.weights["kv"] == SCORERS.default_weights()["kv"]
    assert list(checked.weights) == [cls.name for cls in SCORERS]  # registration order: summing order
    index = checked.prefix.settings()
    assert (index.budget_bytes, index.block_chars) == (8 << 20, 128)
    assert checked.breaker.failures == 3 and checked.settings.vnodes == 7
    assert checked.sections["queue"].scale == 2.0 and checked.sections["tokens"].scale == 8192.0
    cases: list[tuple[Any, str]] = [
        ({"weights": {"prefx": 1}}, "routing.params.weights.prefx: unknown scorer"),
        ({"weights": {"prefix": -1}}, "routing.params.weights.prefix: must be >= 0"),
        ({"weights": ["prefix"]}, "routing.params.weights: must be a mapping"),
        ({"imbalance_abs": "x"}, "routing.params.imbalance_abs: must be a number"),
        ({"imbalance_rel": True}, "routing.params.imbalance_rel: must be a number"),
        ({"vnodes": 0}, "routing.params.vnodes: must be >= 1"),
        ({"seed": 1.5}, "routing.params.seed: must be a whole number"),
        ({"nope": 1}, "routing.params.nope: unknown routing parameter or scorer"),
        ({"prefix": {"ttl": 0}}, "routing.params.prefix.ttl: must be > 0"),
        ({"prefix": {"budget_mb": 0.0001}}, "routing.params.prefix: prefix budget must hold at least one block"),
        ({"breaker": {"failure": 2}}, "routing.params.breaker.failure: unknown parameter; known: cooldown, failures"),
        ({"queue": 3}, "routing.params.queue: must be a mapping"),
        ({"in_flight": {"scale": -1}}, "routing.params.in_flight.scale: must be > 0"),
        ({"kv": {"scale": 1}}, "routing.params.kv.scale: unknown parameter; known: (none)"),
        ({"tokens_scale": 1}, "routing.params.tokens_scale: moved to routing.params.tokens.scale"),
        ({"in_flight_scale": 1}, "routing.params.in_flight_scale: moved to routing.params.in_flight.scale"),
        ("fast", "routing.params: must be a mapping"),
    ]
    for params, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_router("score", params)


def test_defaults_need_no_params() -> None:
    assert _parse({}) == _parse(None)  # type: ignore[arg-type]
    assert _parse({}).settings.imbalance_abs == 4.0


def test_the_example_config_lists_every_default() -> None:
    config = yaml.safe_load(EXAMPLE.read_text())["routing"]
    make_router(config["policy"], config["params"])
    assert _parse(config["params"]) == _parse({})
    # The spelling the example documented before each plugin had its own section still checks out.
    make_router("score", {"weights": {"prefix": 3, "queue": 1}, "imbalance_abs": 4, "prefix": {"budget_mb": 64}})
