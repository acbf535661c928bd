"""Per-tenant I/O log opt-in and retention.

Revision ID: 0003_tenant_iolog
Revises: 0002_ledger
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_tenant_iolog"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the opt-in flag (off for every existing tenant) and its retention."""
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("io_log", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("io_log_retention_days", sa.Float))


def downgrade() -> None:
    """Drop the I/O log columns."""
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("io_log_retention_days")
        batch.drop_column("io_log")
