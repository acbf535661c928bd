"""The relational schema (SQLAlchemy Core); Alembic migrations under fleetgate/migrations create it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    false,
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
    Column("io_log", Boolean, nullable=False, server_default=false()),
    Column("io_log_retention_days", Float),
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

# --- LoRA adapters (0004_adapters): the registry; which replica has which loaded comes from the engines ---

adapters = Table(
    "adapters",
    metadata,
    Column("name", String(200), primary_key=True),  # what requests name as `model` (vLLM's convention)
    Column("base_model", String(200), nullable=False),
    Column("path", String(1000), nullable=False),  # where the engines load it from (a folder they can read)
    Column("owners", JSON, nullable=False),  # tenant external ids; tenants' allowlists may grant it too
    Column("pinned", Boolean, nullable=False, server_default=false()),  # kept loaded on every replica of the base
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# --- metering: the ledger (0002_ledger) ---

# One immutable row per request; event_id (UUIDv7) is the idempotency key. Never holds prompt text.
usage_events = Table(
    "usage_events",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("adapter", String(200)),
    Column("replica_id", String(200)),
    Column("engine", String(32)),
    Column("gpu_type", String(64)),
    Column("started_at", Double, nullable=False),  # Unix seconds, as in UsageEvent
    Column("first_token_at", Double),
    Column("ended_at", Double, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("usage_source", String(16), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("http_status", Integer, nullable=False),
    Index("ix_usage_events_tenant_started", "tenant_id", "started_at"),
    Index("ix_usage_events_replica_started", "replica_id", "started_at"),
)

# Daily roll-ups, updated in the insert's transaction for new events only, so reports never scan raw events.
# adapter and gpu_type use '' for none: they are part of the primary key.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("tenant_id", String(64), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("adapter", String(200), primary_key=True),
    Column("gpu_type", String(64), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("busy_seconds", Double, nullable=False),  # sum of ended_at - started_at, for per-hour GPU cost
    Column("ok", BigInteger, nullable=False),
    Column("aborts", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("timeouts", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("lost", BigInteger, nullable=False),
)

# Versioned price books: a version is never edited; setting prices inserts a new one. Money in micro-units.
price_books = Table(
    "price_books",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("currency", String(16), nullable=False),
    Column("prices", JSON, nullable=False),
    Column("tenant_overrides", JSON, nullable=False),
    Column("gpu_costs", JSON, nullable=False),
    Column("note", String(500)),
    sqlite_autoincrement=True,  # never reuse a version number
)
