"""Tenants and keys in the database (SQLite by default, PostgreSQL by URL); every change bumps a revision."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fleetgate.db.engine import make_engine, migrate
from fleetgate.db.schema import api_keys, tenancy_revision, tenants
from fleetgate.domain.errors import NotFound
from fleetgate.domain.ids import request_id
from fleetgate.tenancy.keys import generate_key, hash_key, key_prefix
from fleetgate.tenancy.models import MICROS, ApiKeyInfo, Tenant, TenantSpec


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything in fleetgate is UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _tenant(row: Row[Any]) -> Tenant:
    data = dict(row._mapping)
    data["created_at"] = _utc(data["created_at"])
    data["updated_at"] = _utc(data["updated_at"])
    return Tenant.model_validate(data)


def _key(row: Row[Any]) -> ApiKeyInfo:
    data = dict(row._mapping)
    for name in ("created_at", "expires_at", "revoked_at"):
        data[name] = _utc(data[name])
    return ApiKeyInfo.model_validate(data)


def _columns(spec: TenantSpec) -> dict[str, Any]:
    return {
        "name": spec.name or spec.external_id,
        "status": spec.status,
        "priority": spec.priority,
        "weight": spec.weight,
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "max_concurrency": spec.max_concurrency,
        "budget_micros": None if spec.budget is None else round(spec.budget * MICROS),
        "max_input_tokens": spec.max_input_tokens,
        "max_output_tokens": spec.max_output_tokens,
        "max_tokens_policy": spec.max_tokens_policy,
        "models": spec.models,
        "adapters": spec.adapters,
        "io_log": spec.io_log,
        "io_log_retention_days": spec.io_log_retention_days,
    }


@dataclass
class ApplyReport:
    """What `apply` changed."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if anything was written."""
        return bool(self.created or self.updated or self.suspended)


class TenantStore:
    """CRUD for tenants and keys; safe to share between the CLI and several gateway processes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> TenantStore:
        """Connect (and migrate to the newest schema)."""
        engine = make_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.engine.dispose()

    async def _bump(self, conn: AsyncConnection) -> None:
        await conn.execute(update(tenancy_revision).values(revision=tenancy_revision.c.revision + 1))

    async def revision(self) -> int:
        """The change counter gateways poll to invalidate their caches."""
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(tenancy_revision.c.revision))
        return int(value or 0)

    async def get_tenant(self, external_id: str) -> Tenant | None:
        """A tenant by the operator's external id (deleted ones too)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tenants).where(tenants.c.external_id == external_id))).first()
        return _tenant(row) if row else None

    async def require_tenant(self, external_id: str) -> Tenant:
        """A tenant that must exist (404 otherwise)."""
        tenant = await self.get_tenant(external_id)
        if tenant is None or tenant.status == "deleted":
            raise NotFound(f"no tenant with external id {external_id!r}")
        return tenant

    async def external_ids(self) -> dict[str, str]:
        """Tenant id -> external id for every tenant, deleted ones too (rating names overrides and reports by it)."""
        return {t.id: t.external_id for t in await self.list_tenants(include_deleted=True)}

    async def list_tenants(self, include_deleted: bool = False) -> list[Tenant]:
        """Every tenant, by external id."""
        query = select(tenants).order_by(tenants.c.external_id)
        if not include_deleted:
            query = query.where(tenants.c.status != "deleted")
        async with self.engine.connect() as conn:
            return [_tenant(r) for r in (await conn.execute(query)).all()]

    async def upsert_tenant(self, spec: TenantSpec, managed_by: str = "operator") -> tuple[Tenant, str]:
        """Create or update a tenant from its spec; returns it and "created" | "updated" | "unchanged"."""
        async with self.engine.begin() as conn:
            result = await self._upsert(conn, spec, managed_by)
        tenant = await self.get_tenant(spec.external_id)
        assert tenant is not None
        return tenant, result

    async def _upsert(self, conn: AsyncConnection, spec: TenantSpec, managed_by: str) -> str:
        row = (await conn.execute(select(tenants).where(tenants.c.external_id == spec.external_id))).first()
        values = _columns(spec)
        now = _now()
        if row is None:
            await conn.execute(
                tenants.insert().values(
                    id=request_id(),
                    external_id=spec.external_id,
                    managed_by=managed_by,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
            )
            await self._bump(conn)
            return "created"
        current = dict(row._mapping)
        if all(current[k] == v for k, v in values.items()):
            return "unchanged"
        await conn.execute(update(tenants).where(tenants.c.id == current["id"]).values(updated_at=now, **values))
        await self._bump(conn)
        return "updated"

    async def set_status(self, external_id: str, status: str) -> Tenant:
        """Suspend or resume a tenant (keys stay, requests get 403 while suspended)."""
        tenant = await self.require_tenant(external_id)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(tenants).where(tenants.c.id == tenant.id).values(status=status, updated_at=_now())
            )
            await self._bump(conn)
        return await self.require_tenant(external_id)

    async def delete_tenant(self, external_id: str) -> None:
        """Mark a tenant deleted and revoke its keys; the row stays so its usage history keeps a name."""
        tenant = await self.require_tenant(external_id)
        now = _now()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(tenants).where(tenants.c.id == tenant.id).values(status="deleted", updated_at=now)
            )
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.tenant_id == tenant.id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await self._bump(conn)

    async def apply(self, specs: list[TenantSpec], prune: bool = True) -> ApplyReport:
        """Make the store match a declared list: upsert each, suspend active operator tenants not listed."""
        report = ApplyReport()
        listed = {s.external_id for s in specs}
        async with self.engine.begin() as conn:
            for spec in specs:
                outcome = await self._upsert(conn, spec, "operator")
                getattr(report, outcome).append(spec.external_id)
            if prune:
                rows = (
                    await conn.execute(
                        select(tenants.c.id, tenants.c.external_id).where(
                            tenants.c.status == "active", tenants.c.managed_by == "operator"
                        )
                    )
                ).all()
                for tid, ext in rows:
                    if ext not in listed:
                        await conn.execute(
                            update(tenants).where(tenants.c.id == tid).values(status="suspended", updated_at=_now())
                        )
                        report.suspended.append(ext)
                if report.suspended:
                    await self._bump(conn)
        return report

    async def create_key(
        self,
        external_id: str,
        *,
        name: str | None = None,
        expires_at: datetime | None = None,
        plaintext: str | None = None,
    ) -> tuple[str, ApiKeyInfo]:
        """Create a key for a tenant; the plaintext is returned once and never stored."""
        tenant = await self.require_tenant(external_id)
        key = plaintext or generate_key()
        key_id = request_id()
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    tenant_id=tenant.id,
                    prefix=key_prefix(key),
                    key_hash=hash_key(key),
                    name=name,
                    created_at=_now(),
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
            await self._bump(conn)
        info = await self.get_key(key_id)
        return key, info

    async def ensure_key(self, external_id: str, plaintext: str, name: str) -> ApiKeyInfo:
        """Make sure a known key (the demo key from config) belongs to the tenant and is usable."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_hash == hash_key(plaintext)))).first()
        if row is None:
            return (await self.create_key(external_id, name=name, plaintext=plaintext))[1]
        info = _key(row)
        if info.revoked_at is not None or info.expires_at is not None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(api_keys).where(api_keys.c.id == info.id).values(revoked_at=None, expires_at=None)
                )
                await self._bump(conn)
        return await self.get_key(info.id)

    async def get_key(self, key_id: str) -> ApiKeyInfo:
        """A key by id (404 if unknown)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return _key(row)

    async def list_keys(self, external_id: str) -> list[ApiKeyInfo]:
        """A tenant's keys, newest first."""
        tenant = await self.require_tenant(external_id)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(api_keys).where(api_keys.c.tenant_id == tenant.id).order_by(api_keys.c.created_at.desc())
                )
            ).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key now (every gateway stops accepting it within a poll interval)."""
        await self.get_key(key_id)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            await self._bump(conn)
        return await self.get_key(key_id)

    async def rotate_key(self, key_id: str, grace_seconds: float = 0) -> tuple[str, ApiKeyInfo]:
        """A new key for the same tenant; the old one stays valid for `grace_seconds`, then expires."""
        old = await self.get_key(key_id)
        if old.revoked_at is not None:
            raise NotFound(f"API key {key_id!r} is revoked; create a new key instead")
        async with self.engine.connect() as conn:
            ext = await conn.scalar(select(tenants.c.external_id).where(tenants.c.id == old.tenant_id))
        new_key, info = await self.create_key(str(ext), name=old.name, expires_at=old.expires_at)
        cutoff = _now() + timedelta(seconds=grace_seconds)
        async with self.engine.begin() as conn:
            if grace_seconds <= 0:
                await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=_now()))
            elif old.expires_at is None or old.expires_at > cutoff:
                await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(expires_at=cutoff))
            await self._bump(conn)
        return new_key, info

    async def lookup(self, key_hash: str) -> tuple[ApiKeyInfo, Tenant] | None:
        """The key and its tenant for a key hash (the auth cache's miss path)."""
        query = select(api_keys, tenants).join(tenants, tenants.c.id == api_keys.c.tenant_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query.where(api_keys.c.key_hash == key_hash))).first()
        if row is None:
            return None
        data = row._mapping
        key = ApiKeyInfo.model_validate(
            {c.name: _utc(data[c]) if c.name.endswith("_at") else data[c] for c in api_keys.c}
        )
        tenant = Tenant.model_validate(
            {c.name: _utc(data[c]) if c.name.endswith("_at") else data[c] for c in tenants.c}
        )
        return key, tenant
