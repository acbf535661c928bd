"""Typed plugin parameters: a plugin declares a `@parameters` class of them; config is checked against it by name.

A parameter is a field with a default and, for numbers, bounds (`scale: float = param(4.0, gt=0)`); its type
(int, float, bool, str, or one of these `| None`) says what config may give. `@parameters` makes the class a frozen
dataclass whose bounds hold from construction on; `parse_section` builds one from a plain config mapping, and
every error names the offending key (`routing.params.queue.scale: must be > 0 (got 0)`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union, dataclass_transform, get_args, get_origin, get_type_hints

from fleetgate.domain.errors import ConfigError

P = TypeVar("P")


class ParamError(ValueError):
    """One parameter out of its bounds; `parse_section` turns it into a ConfigError naming the parameter."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def param(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A parameter field: its default and, for numbers, `ge` (>=) / `gt` (>) bounds that `check` enforces."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt})


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def parameters(cls: type[P]) -> type[P]:
    """Make `cls` a frozen, slotted dataclass whose `param` bounds are checked on construction (then its own
    `__post_init__`, if any, for checks across fields)."""
    own: Callable[[Any], None] | None = cls.__dict__.get("__post_init__")

    def post_init(self: Any) -> None:
        check(self)
        if own is not None:
            own(self)

    setattr(cls, "__post_init__", post_init)  # noqa: B010 (a method added before the dataclass is made)
    return dataclasses.dataclass(frozen=True, slots=True)(cls)


def check(params: Any) -> None:
    """Raise ParamError for the first field of a parameter dataclass that is out of its bounds."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        ge, gt = f.metadata.get("ge"), f.metadata.get("gt")
        if ge is not None and not value >= ge:
            raise ParamError(f.name, f"must be >= {ge:g} (got {value!r})")
        if gt is not None and not value > gt:
            raise ParamError(f.name, f"must be > {gt:g} (got {value!r})")


def number(value: Any, where: str, ge: float | None = None) -> float:
    """A config number (bool and NaN refused), at least `ge` when given."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{where}: must be a number (got {value!r})")
    if ge is not None and value < ge:
        raise ConfigError(f"{where}: must be >= {ge:g} (got {value!r})")
    return float(value)


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    """A config mapping (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: must be a mapping of names to values (got {value!r})")
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: must not be null")
    kind = next(a for a in args if a is not type(None))
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: must be {'true or false' if kind is bool else 'a string'} (got {value!r})")
        return value
    checked = number(value, where)
    if kind is int:
        if not checked.is_integer():
            raise ConfigError(f"{where}: must be a whole number (got {value!r})")
        return int(checked)
    return checked


def parse_section(kind: type[P], raw: Any, where: str) -> P:
    """Build the parameter dataclass `kind` from a config mapping; unknown keys and bad values name `where.key`."""
    given = mapping(raw, where)
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    hints = get_type_hints(kind)
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown parameter; known: {', '.join(sorted(known)) or '(none)'}")
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return kind(**values)
    except ParamError as exc:
        raise ConfigError(f"{where}.{exc.name}: {exc.message}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@parameters
class NoParams:
    """The parameters of a plugin that has none."""
