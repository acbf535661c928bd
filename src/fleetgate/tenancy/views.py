"""Public views of tenants and keys, shared by the admin API and the CLI (never a key hash, never a key twice)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from fleetgate.tenancy.models import ApiKeyInfo, Tenant


class TenantView(BaseModel):
    """A tenant as the admin API and `tenants show --json` present it."""

    id: str
    external_id: str
    name: str
    status: str
    priority: str
    weight: int
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget: float | None
    max_input_tokens: int | None
    max_output_tokens: int | None
    max_tokens_policy: str
    models: list[str]
    adapters: list[str]
    io_log: bool
    io_log_retention_days: float | None
    managed_by: str
    created_at: datetime
    updated_at: datetime


def tenant_view(tenant: Tenant) -> TenantView:
    """Public form of a stored tenant (budget in currency units)."""
    spec = tenant.to_spec()
    return TenantView(
        **{**spec.model_dump(), "status": tenant.status},
        id=tenant.id,
        managed_by=tenant.managed_by,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
    )


class KeyView(BaseModel):
    """A key as listings show it: prefix only, never the key."""

    id: str
    prefix: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def key_view(info: ApiKeyInfo) -> KeyView:
    """Public form of a stored key."""
    return KeyView(**{k: v for k, v in info.model_dump().items() if k in KeyView.model_fields})


class NewKey(KeyView):
    """A freshly created key: the only time the key itself is shown."""

    key: str
