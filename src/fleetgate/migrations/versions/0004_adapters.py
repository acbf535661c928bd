"""The LoRA adapter registry.

Revision ID: 0004_adapters
Revises: 0003_tenant_iolog
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_adapters"
down_revision = "0003_tenant_iolog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the adapters table."""
    op.create_table(
        "adapters",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("owners", sa.JSON, nullable=False),
        sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the adapters table."""
    op.drop_table("adapters")
