"""The LoRA adapter registry: name, base model, location, owning tenants, pinned; and who may use which.

Records live in the tenancy database (every change bumps the tenancy revision, so gateways refresh within a poll
interval). Which replica has which adapter loaded is not stored here: that comes from the engines themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fleetgate.db.schema import adapters, tenancy_revision
from fleetgate.domain.errors import InvalidRequest, ModelNotFound, NotFound
from fleetgate.tenancy.models import Tenant

# vLLM takes the adapter's name as a `model`; keep it to characters that survive URLs, headers and metric labels.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class AdapterSpec(BaseModel):
    """What an operator registers."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base_model: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1, max_length=1000, description="a folder the engines can read")
    owners: list[str] = Field(default_factory=list, description="tenant external ids that may use it")
    pinned: bool = Field(False, description="keep loaded on every replica of the base model")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value) or ":" in value:
            raise ValueError("letters, digits, '.', '_' and '-' only (at most 200), starting with a letter or digit")
        return value

    @field_validator("owners")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return sorted(set(value))


class Adapter(AdapterSpec):
    """A registered adapter."""

    created_at: datetime
    updated_at: datetime

    def usable_by(self, tenant: Tenant) -> bool:
        """Owners may use it, and tenants whose allowlist names it; the base model must be allowed too."""
        return (tenant.external_id in self.owners or tenant.allows_adapter(self.name)) and tenant.allows_model(
            self.base_model
        )

    def public(self) -> dict[str, Any]:
        """The admin view."""
        return self.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class Target:
    """What a request's `model` names: a base model, or an adapter on its base model."""

    model: str  # the base model (what the replicas serve, what metering calls `model`)
    adapter: Adapter | None = None

    @property
    def engine_model(self) -> str:
        """The `model` the engine must see: the adapter's name (vLLM's convention), else the base model."""
        return self.adapter.name if self.adapter is not None else self.model


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _adapter(row: Any) -> Adapter:
    data = dict(row._mapping)
    data["created_at"] = _utc(data["created_at"])
    data["updated_at"] = _utc(data["updated_at"])
    return Adapter.model_validate(data)


class AdapterStore:
    """CRUD for adapter records, sharing the tenancy database and its revision counter."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, spec: AdapterSpec) -> tuple[Adapter, str]:
        """Create or replace an adapter; returns it and "created" or "updated"."""
        now = datetime.now(UTC)
        values = spec.model_dump()
        async with self.engine.begin() as conn:
            found = (await conn.execute(select(adapters.c.name).where(adapters.c.name == spec.name))).first()
            if found is None:
                await conn.execute(adapters.insert().values(**values, created_at=now, updated_at=now))
                action = "created"
            else:
                await conn.execute(
                    update(adapters).where(adapters.c.name == spec.name).values(**values, updated_at=now)
                )
                action = "updated"
            await conn.execute(update(tenancy_revision).values(revision=tenancy_revision.c.revision + 1))
        adapter = await self.get(spec.name)
        assert adapter is not None
        return adapter, action

    async def get(self, name: str) -> Adapter | None:
        """One adapter by name."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(adapters).where(adapters.c.name == name))).first()
        return _adapter(row) if row else None

    async def list(self) -> list[Adapter]:
        """Every adapter, by name."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(adapters).order_by(adapters.c.name))).all()
        return [_adapter(r) for r in rows]

    async def remove(self, name: str) -> None:
        """Forget an adapter (404 if unknown); replicas that still hold it unload it as they need room."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(adapters).where(adapters.c.name == name))
            if not result.rowcount:
                raise NotFound(f"no adapter named {name!r}")
            await conn.execute(update(tenancy_revision).values(revision=tenancy_revision.c.revision + 1))


class AdapterCatalog:
    """The gateway's in-memory copy of the registry, reloaded when the tenancy revision moves."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store
        self._by_name: dict[str, Adapter] = {}

    async def reload(self) -> None:
        """Read every record again (a few rows; called at start and on each tenancy change)."""
        self._by_name = {a.name: a for a in await self.store.list()}

    def get(self, name: str) -> Adapter | None:
        """A registered adapter."""
        return self._by_name.get(name)

    def all(self) -> list[Adapter]:
        """Every registered adapter."""
        return list(self._by_name.values())

    def pinned(self) -> list[Adapter]:
        """Adapters to keep loaded everywhere their base runs."""
        return [a for a in self._by_name.values() if a.pinned]

    def visible_to(self, tenant: Tenant) -> list[Adapter]:
        """The adapters this tenant may use (and see in /v1/models)."""
        return [a for a in self._by_name.values() if a.usable_by(tenant)]

    def resolve(self, model: str, tenant: Tenant, base_models: set[str]) -> Target:
        """Map a request's `model` to its base and adapter: `adapter`, or `base:adapter`; 403/404 saying why."""
        if model in base_models:
            return Target(model)
        base, sep, name = model.partition(":")
        adapter = self._by_name.get(name if sep else model)
        if adapter is not None and not adapter.usable_by(tenant):
            adapter = None  # another tenant's adapter is answered like one that does not exist: no name leaks
        if adapter is None:
            if sep:
                raise ModelNotFound(
                    f"no LoRA adapter named `{name}` is registered for `{base}`; see /v1/models", param="model"
                )
            return Target(model)  # not an adapter: the caller answers 404 for a model nobody serves
        if sep and adapter.base_model != base:
            raise InvalidRequest(
                f"adapter `{name}` belongs to base model `{adapter.base_model}`, not `{base}`: ask for"
                f" `{adapter.base_model}:{name}` or `{name}`",
                param="model",
            )
        return Target(adapter.base_model, adapter)
