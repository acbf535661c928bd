"""The relational schema (SQLAlchemy Core); Alembic migrations under fleetgate/migrations create it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("external_id", String(200), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # active | suspended | deleted
    Column("priority", String(16), nullable=False),  # interactive | standard | batch
    Column("weight", Integer, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_concurrency", Integer),
    Column("budget_micros", BigInteger),
    Column("max_input_tokens", Integer),
    Column("max_output_tokens", Integer),
    Column("max_tokens_policy", String(16), nullable=False),  # clamp | reject
    Column("models", JSON, nullable=False),
    Column("adapters", JSON, nullable=False),
    Column("managed_by", String(16), nullable=False),  # operator | fleetgate (the seeded demo tenant)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(36), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("name", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

# One row; bumped by every tenancy change so gateway processes can drop their caches within a poll interval.
tenancy_revision = Table(
    "tenancy_revision",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
)
