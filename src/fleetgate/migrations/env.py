"""Alembic environment: migrations run on a connection handed over by fleetgate.db.engine."""

from __future__ import annotations

from alembic import context

from fleetgate.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through fleetgate (fleetgate.db.engine.migrate), not the alembic CLI")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
