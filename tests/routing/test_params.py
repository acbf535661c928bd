"""Typed plugin parameters: bounds hold from construction on; config values are checked by type and named."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.params import NoParams, ParamError, param, parameters, parse_section


@parameters
class Knobs:
    """Every kind of parameter a plugin may declare."""

    count: int = param(3, ge=1)
    ratio: float = param(0.5, gt=0)
    label: str = "x"
    on: bool = True
    cap: int | None = None

    def __post_init__(self) -> None:
        if self.cap is not None and self.cap < self.count:
            raise ValueError("cap must be at least count")


def test_parameters_are_frozen_and_checked_on_construction() -> None:
    knobs = Knobs()
    with pytest.raises(dataclasses.FrozenInstanceError):
        knobs.count = 4  # type: ignore[misc]
    with pytest.raises(ParamError, match="count: must be >= 1"):
        Knobs(count=0)
    with pytest.raises(ParamError, match="ratio: must be > 0"):
        Knobs(ratio=0.0)
    with pytest.raises(ValueError, match="cap must be at least count"):  # the class's own check runs after
        Knobs(cap=2)


def test_config_values_are_coerced_by_type() -> None:
    knobs = parse_section(Knobs, {"count": 4.0, "ratio": 2, "label": "y", "on": False, "cap": 9}, "p")
    assert knobs == Knobs(count=4, ratio=2.0, label="y", on=False, cap=9)
    assert isinstance(knobs.count, int) and isinstance(knobs.ratio, float)
    assert parse_section(Knobs, None, "p") == Knobs() == parse_section(Knobs, {"cap": None}, "p")
    assert parse_section(NoParams, {}, "p") == NoParams()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"count": 2.5}, "p.count: must be a whole number (got 2.5)"),
        ({"count": True}, "p.count: must be a number (got True)"),
        ({"ratio": math.nan}, "p.ratio: must be a number"),
        ({"ratio": "1"}, "p.ratio: must be a number (got '1')"),
        ({"ratio": None}, "p.ratio: must not be null"),
        ({"label": 3}, "p.label: must be a string (got 3)"),
        ({"on": "yes"}, "p.on: must be true or false (got 'yes')"),
        ({"count": 0}, "p.count: must be >= 1 (got 0)"),
        ({"cap": 1}, "p: cap must be at least count"),
        ({"size": 1}, "p.size: unknown parameter; known: cap, count, label, on, ratio"),
        ([1], "p: must be a mapping"),
    ],
)
def test_bad_values_name_the_parameter(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_section(Knobs, raw, "p")
    assert str(caught.value).startswith(message)
