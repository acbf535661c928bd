"""Suite-wide fixtures: an isolated state dir, and real databases (SQLite file, PostgreSQL) per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.fakes import FakeEngine
from tests.services import POSTGRES_ADMIN_URL, missing, reachable


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Keep the default SQLite database and run dir of every test (and every process it starts) out of ~/.local.
    mp = pytest.MonkeyPatch()
    state = tmp_path_factory.mktemp("state")
    mp.setenv("FLEETGATE_STATE_DIR", str(state))
    yield
    mp.undo()


async def _pg_admin() -> asyncpg.Connection:
    dsn = POSTGRES_ADMIN_URL
    if not reachable("127.0.0.1", 5432):
        missing("PostgreSQL", "127.0.0.1:5432")
    return await asyncpg.connect(dsn)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"fg_test_{uuid.uuid4().hex[:12]}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'fleetgate.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run a test on both SQLite and PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    """A fake OpenAI engine serving `smollm2` (a module with its own `engine` overrides this one)."""
    fake = FakeEngine(model="smollm2")
    await fake.start()
    yield fake
    await fake.stop()
