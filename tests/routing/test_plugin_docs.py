"""Every shipped plugin documents itself in one format, and its YAML examples are configs the router accepts."""

from __future__ import annotations

import pytest

from fleetgate.routing.base import Scorer
from fleetgate.routing.breaker import BreakerRegistry, BreakerSettings
from fleetgate.routing.filters import BreakerClosed, HasRoom
from fleetgate.routing.plugins import POLICIES, SCORERS, default_filters, make_router
from fleetgate.routing.policies import ScorePolicy
from tests.routing.helpers import check_documented, yaml_examples


@pytest.mark.parametrize("scorer", list(SCORERS), ids=lambda cls: cls.name)
def test_scorers_document_inputs_parameters_weight_and_an_example(scorer: type[Scorer]) -> None:
    check_documented(scorer, scorer.inputs, scorer.weight)
    examples = yaml_examples(scorer.__doc__ or "")
    assert any(scorer.name in example["routing"]["params"].get("weights", {}) for example in examples)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_document_inputs_and_an_example(name: str) -> None:
    policy = make_router(name).policy
    kind = type(policy)
    check_documented(kind, None if kind is ScorePolicy else policy.inputs)
    examples = yaml_examples(kind.__doc__ or "")
    assert examples, f"{kind.__qualname__}: no YAML example"


def test_filters_document_their_inputs() -> None:
    for f in [*default_filters(BreakerRegistry()), HasRoom(lambda r: 1)]:
        check_documented(type(f), f.inputs, params=BreakerSettings if isinstance(f, BreakerClosed) else None)
