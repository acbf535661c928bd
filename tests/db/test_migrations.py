"""Migrations apply on empty SQLite and PostgreSQL databases, are idempotent, and downgrade cleanly."""

from __future__ import annotations

from sqlalchemy import inspect

from fleetgate.db.engine import async_url, current_revision, downgrade, make_engine, migrate


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_twice_then_downgrade_to_base(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert await current_revision(engine) is None
        await migrate(engine)
        head = await current_revision(engine)
        assert head is not None
        await migrate(engine)  # idempotent
        assert await current_revision(engine) == head
        assert {"tenants", "api_keys", "tenancy_revision"} <= await _tables(db_url)
        await downgrade(engine, "base")
        assert await current_revision(engine) is None
        assert await _tables(db_url) <= {"alembic_version"}
        await migrate(engine)  # and back up again from base
        assert await current_revision(engine) == head
    finally:
        await engine.dispose()


def test_url_normalisation() -> None:
    assert async_url("sqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert async_url("postgresql://u@127.0.0.1/db") == "postgresql+asyncpg://u@127.0.0.1/db"
    assert async_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
