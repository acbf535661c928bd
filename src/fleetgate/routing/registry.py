"""The scorer registry: scorer classes by name, each bringing its own parameters, default weight and inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from fleetgate.routing.base import Scorer, known_input
from fleetgate.routing.settings import RESERVED, RoutingParams

S = TypeVar("S", bound=type[Scorer])


class ScorerRegistry:
    """Scorer classes in registration order: the order the `score` policy sums them and names a winner's reason."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Scorer]] = {}

    def register(self, cls: S) -> S:
        """Add a scorer class; ValueError if its declarations are incomplete or its name is taken."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{cls.__qualname__}: `name` must be an identifier (its key under routing.params)")
        if name in self._by_name:
            raise ValueError(f"scorer {name!r} is already registered ({self._by_name[name].__qualname__})")
        if not dataclasses.is_dataclass(cls.Params):
            raise ValueError(f"scorer {name!r}: Params must be a @parameters class")
        if dataclasses.fields(cls.Params) and name in RESERVED:
            raise ValueError(f"scorer {name!r}: routing.params.{name} is the router's own; choose another name")
        if not cls.weight >= 0:
            raise ValueError(f"scorer {name!r}: default weight must be >= 0")
        unknown = [i for i in cls.inputs if not known_input(i)]
        if unknown:
            raise ValueError(f"scorer {name!r}: unknown inputs {unknown} (see routing/base.py)")
        self._by_name[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a scorer (tests that register their own)."""
        del self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[type[Scorer]]:
        return iter(list(self._by_name.values()))

    def sections(self) -> dict[str, type[Any]]:
        """Each scorer's name -> its Params class: the sections `routing.params` may hold."""
        return {name: cls.Params for name, cls in self._by_name.items()}

    def default_weights(self) -> dict[str, float]:
        """Each scorer's name -> its default weight."""
        return {name: cls.weight for name, cls in self._by_name.items()}

    def weighted(self, params: RoutingParams, weights: Mapping[str, float]) -> list[tuple[Scorer, float]]:
        """Instances of the scorers with a weight above 0, built from their sections, with their weights."""
        out: list[tuple[Scorer, float]] = []
        for name, weight in weights.items():
            if weight > 0:
                cls = self._by_name[name]
                section = params.sections.get(name)
                out.append((cls(section if section is not None else cls.Params()), weight))
        return out
