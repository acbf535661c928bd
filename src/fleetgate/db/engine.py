"""Async SQLAlchemy engines for SQLite (default) and PostgreSQL, and running the Alembic migrations."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from fleetgate.config import DatabaseConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.domain.paths import PRIVATE_FILE_MODE, private_dir, private_file, tighten

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def async_url(url: str) -> str:
    """Normalise a database URL to its async driver (aiosqlite, asyncpg)."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        return url
    raise ConfigError(f"database.url: unsupported URL {url.split('://')[0]}://...; use sqlite:/// or postgresql://")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the CLI write while gateways read; busy_timeout waits for a writer instead of failing.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _default(field: str) -> float:
    return float(DatabaseConfig.model_fields[field].default)


def _pg_connect_args(timeouts: DatabaseConfig | None, *, statements: bool = True) -> dict[str, Any]:
    """asyncpg's own timeouts: `timeout` bounds the whole connect (TCP, TLS, startup), `command_timeout` every
    statement, so a database that accepts TCP but never answers costs a request seconds, not forever."""
    connect = timeouts.connect_timeout if timeouts is not None else _default("connect_timeout")
    args: dict[str, Any] = {"timeout": connect}
    if statements:
        args["command_timeout"] = timeouts.statement_timeout if timeouts is not None else _default("statement_timeout")
    return args


def make_engine(url: str, timeouts: DatabaseConfig | None = None) -> AsyncEngine:
    """Create an async engine; SQLite files get WAL mode and their folder is created; PostgreSQL connections get
    connect, statement and pool-checkout timeouts (from `timeouts`, else DatabaseConfig's defaults)."""
    url = async_url(url)
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            private_sqlite_file(Path(path))
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    pool_timeout = timeouts.pool_timeout if timeouts is not None else _default("pool_timeout")
    return create_async_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        pool_timeout=pool_timeout,
        connect_args=_pg_connect_args(timeouts),
    )


def private_sqlite_file(path: Path) -> None:
    """Create a SQLite file (and its folder) readable by this user only before SQLite opens it: SQLite gives the
    -wal, -shm and -journal files the database file's mode, so they follow. Files of an older install are narrowed.
    """
    folder = path.parent
    if not folder.exists():
        private_dir(folder)
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        tighten(path.with_name(path.name + suffix), PRIVATE_FILE_MODE)


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    url = async_url(url)
    if not url.startswith("sqlite"):
        return None
    path = url.removeprefix("sqlite+aiosqlite:///")
    return path if path and path != ":memory:" else None


def make_sync_engine(sqlite_file: str) -> Engine:
    """A plain (sync) engine on a SQLite file, with the same pragmas as the async one (for worker processes)."""
    engine = create_engine(f"sqlite:///{sqlite_file}")
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config(connection: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@contextlib.asynccontextmanager
async def _ddl(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction for migrations: on PostgreSQL from a one-connection engine without the statement timeout,
    since building an index on a large ledger legitimately takes minutes (connecting stays bounded)."""
    if engine.dialect.name != "postgresql":
        async with engine.begin() as conn:
            yield conn
        return
    ddl = create_async_engine(engine.url, poolclass=NullPool, connect_args=_pg_connect_args(None, statements=False))
    try:
        async with ddl.begin() as conn:
            yield conn
    finally:
        await ddl.dispose()


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to `revision` (idempotent)."""
    async with _ddl(engine) as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade the database to `revision` ("base" drops everything)."""
    async with _ddl(engine) as conn:
        await conn.run_sync(lambda sync: command.downgrade(_alembic_config(sync), revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None if never migrated."""
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
