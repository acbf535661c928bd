"""The usage ledger: immutable events, their daily roll-ups, and versioned price books.

Revision ID: 0002_ledger
Revises: 0001_tenancy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_ledger"
down_revision = "0001_tenancy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create usage_events, usage_daily and price_books (kept in sync with fleetgate.db.schema)."""
    op.create_table(
        "usage_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("adapter", sa.String(200)),
        sa.Column("replica_id", sa.String(200)),
        sa.Column("engine", sa.String(32)),
        sa.Column("gpu_type", sa.String(64)),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("first_token_at", sa.Double),
        sa.Column("ended_at", sa.Double, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
    )
    op.create_index("ix_usage_events_tenant_started", "usage_events", ["tenant_id", "started_at"])
    op.create_index("ix_usage_events_replica_started", "usage_events", ["replica_id", "started_at"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("adapter", sa.String(200), primary_key=True),
        sa.Column("gpu_type", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("busy_seconds", sa.Double, nullable=False),
        sa.Column("ok", sa.BigInteger, nullable=False),
        sa.Column("aborts", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("timeouts", sa.BigInteger, nullable=False),
        sa.Column("rejected", sa.BigInteger, nullable=False),
        sa.Column("lost", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "price_books",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(16), nullable=False),
        sa.Column("prices", sa.JSON, nullable=False),
        sa.Column("tenant_overrides", sa.JSON, nullable=False),
        sa.Column("gpu_costs", sa.JSON, nullable=False),
        sa.Column("note", sa.String(500)),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    """Drop the ledger tables."""
    op.drop_table("price_books")
    op.drop_table("usage_daily")
    op.drop_index("ix_usage_events_replica_started", table_name="usage_events")
    op.drop_index("ix_usage_events_tenant_started", table_name="usage_events")
    op.drop_table("usage_events")
