"""Shared builders for the routing tests."""

from __future__ import annotations

import dataclasses
import inspect
import random
import re
import textwrap
from typing import Any

import yaml

from fleetgate.config import Config
from fleetgate.domain.engine_kind import EngineKind
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import known_input
from fleetgate.routing.context import RouteContext, RouterState
from fleetgate.routing.plugins import make_router
from fleetgate.routing.prefix_index import PrefixIndex, PrefixSettings
from fleetgate.routing.settings import RoutingSettings


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


def replicas(n: int, model: str = "m", kind: EngineKind = "vllm") -> list[Replica]:
    """n healthy replicas serving `model`."""
    return [
        Replica(id=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", kind=kind, models={model}, healthy=True)
        for i in range(n)
    ]


def metrics(
    now: float, waiting: float = 0, running: float = 0, kv: float | None = None, slots: int | None = None
) -> ReplicaMetrics:
    """A fresh snapshot."""
    return ReplicaMetrics(scraped_at=now, waiting=waiting, running=running, kv_usage=kv, total_slots=slots)


def context(
    candidates: list[Replica],
    now: float = 1000.0,
    settings: RoutingSettings | None = None,
    index: PrefixIndex | None = None,
    hashes: list[int] | None = None,
    seed: int = 0,
) -> RouteContext:
    """A RouteContext over candidates."""
    state = RouterState(
        settings or RoutingSettings(),
        index or PrefixIndex(PrefixSettings(), clock=lambda: now),
        lambda: now,
        random.Random(seed),
    )
    return RouteContext(candidates, state, hashes or [])


def yaml_examples(doc: str) -> list[Any]:
    """The ```yaml blocks of a docstring, parsed."""
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.DOTALL)
    return [yaml.safe_load(textwrap.dedent(block)) for block in blocks]


def check_documented(
    cls: type[Any], inputs: tuple[str, ...] | None, weight: float | None = None, params: type[Any] | None = None
) -> None:
    """Hold a plugin's docstring to the format of routing/base.py: summary, Inputs (exactly `inputs` when given),
    Parameters (each with its default), Weight, and YAML examples that fleetgate's config and router accept."""
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    assert lines and lines[0].strip(), f"{cls.__qualname__}: no summary line"
    declared = next((line for line in lines if line.startswith("Inputs:")), None)
    assert declared is not None, f"{cls.__qualname__}: no Inputs line"
    if inputs is not None:
        assert [i.strip() for i in declared.removeprefix("Inputs:").split(",")] == list(inputs), cls.__qualname__
        assert all(known_input(i) for i in inputs), cls.__qualname__
    assert any(line.startswith("Parameters") for line in lines), f"{cls.__qualname__}: no Parameters line"
    params = params or getattr(cls, "Params", None)
    for f in dataclasses.fields(params) if params is not None else ():
        documented = [line for line in lines if line.strip().startswith(f"{f.name}:")]
        assert documented and f"= {f.default!r}" in documented[0], f"{cls.__qualname__}: parameter {f.name}"
    if weight is not None:
        assert f"Weight: {weight!r}" in lines, f"{cls.__qualname__}: Weight line must say {weight!r}"
    for example in yaml_examples(doc):
        config = Config.model_validate(example)
        if "routing" in example:
            make_router(config.routing.policy, config.routing.params)
