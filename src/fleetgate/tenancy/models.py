"""Tenants and API keys as the rest of fleetgate sees them (validated, immutable)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from fleetgate.tenancy.limits.base import LimitSpec

TenantStatus = Literal["active", "suspended", "deleted"]
Priority = Literal["interactive", "standard", "batch"]
MaxTokensPolicy = Literal["clamp", "reject"]
ALL_MODELS = "*"
MICROS = 1_000_000
INT32 = 2**31 - 1  # the store's INTEGER columns (PostgreSQL int4): a larger limit is refused with a 400, not stored
MAX_BUDGET = 10**12  # currency units per month; its micro-units still fit the BIGINT column
MAX_RETENTION_DAYS = 36_500.0
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # names are shown in tables and logs; PostgreSQL refuses NUL in text
Name = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL)]


class TenantSpec(BaseModel):
    """What an operator declares about a tenant (`apply`, `PUT /admin/tenants/{external_id}`, `tenants create`)."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$")
    name: str | None = Field(None, max_length=200, pattern=_NO_CONTROL)
    status: Literal["active", "suspended"] = "active"
    priority: Priority = "standard"
    weight: int = Field(1, ge=1, le=1000, description="share of the fleet under contention (fair queuing)")
    rpm: int | None = Field(None, ge=1, le=INT32, description="requests per minute")
    tpm: int | None = Field(None, ge=1, le=INT32, description="tokens per minute (prompt + completion)")
    max_concurrency: int | None = Field(None, ge=1, le=INT32)
    budget: float | None = Field(
        None, ge=0, le=MAX_BUDGET, allow_inf_nan=False, description="spend cap per calendar month, in currency units"
    )
    max_input_tokens: int | None = Field(None, ge=1, le=INT32)
    max_output_tokens: int | None = Field(None, ge=1, le=INT32)
    max_tokens_policy: MaxTokensPolicy = "clamp"
    models: list[Name] = Field(
        default_factory=lambda: [ALL_MODELS], max_length=1000, description='allowed models; ["*"] = all'
    )
    adapters: list[Name] = Field(default_factory=list, max_length=1000, description="allowed LoRA adapters")
    io_log: bool = Field(False, description="keep this tenant's requests and responses in the I/O log")
    io_log_retention_days: float | None = Field(
        None, gt=0, le=MAX_RETENTION_DAYS, allow_inf_nan=False, description="default: iolog.default_retention_days"
    )

    @field_validator("models", "adapters")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return sorted(set(value))


class Tenant(BaseModel):
    """A stored tenant."""

    model_config = ConfigDict(frozen=True)

    id: str
    external_id: str
    name: str
    status: TenantStatus
    priority: Priority
    weight: int
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_micros: int | None
    max_input_tokens: int | None
    max_output_tokens: int | None
    max_tokens_policy: MaxTokensPolicy
    models: list[str]
    adapters: list[str]
    managed_by: str
    io_log: bool = False
    io_log_retention_days: float | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def limits(self) -> LimitSpec:
        """The fast limits of this tenant."""
        return LimitSpec(
            rpm=self.rpm, tpm=self.tpm, max_concurrency=self.max_concurrency, budget_micros=self.budget_micros
        )

    def allows_model(self, model: str) -> bool:
        """True if the tenant may use this model."""
        return ALL_MODELS in self.models or model in self.models

    def allows_adapter(self, adapter: str) -> bool:
        """True if the tenant may use this LoRA adapter."""
        return adapter in self.adapters

    def to_spec(self) -> TenantSpec:
        """The declarative form (for `apply` comparisons and `tenants show`)."""
        return TenantSpec(
            external_id=self.external_id,
            name=self.name,
            status="suspended" if self.status == "suspended" else "active",
            priority=self.priority,
            weight=self.weight,
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrency=self.max_concurrency,
            budget=None if self.budget_micros is None else self.budget_micros / MICROS,
            max_input_tokens=self.max_input_tokens,
            max_output_tokens=self.max_output_tokens,
            max_tokens_policy=self.max_tokens_policy,
            models=self.models,
            adapters=self.adapters,
            io_log=self.io_log,
            io_log_retention_days=self.io_log_retention_days,
        )


class ApiKeyInfo(BaseModel):
    """A stored key: never the key itself, only its hash and a short prefix to recognise it."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant_id: str
    prefix: str
    key_hash: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        """True if the key is neither revoked nor expired at `now`."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now

    def public(self) -> dict[str, object]:
        """What listings show (no hash)."""
        return {
            "id": self.id,
            "prefix": self.prefix,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }
