"""Suite-wide fixtures: an isolated state dir, throwaway PostgreSQL/Redis/NATS servers (see tests/servers), and
real databases (SQLite file, PostgreSQL) per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.servers import MissingBinary, NatsServer, PostgresServer, RedisServer
from tests.servers.process import ServerFailed

S = TypeVar("S", PostgresServer, RedisServer, NatsServer)


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Keep the default SQLite database and run dir of every test (and every process it starts) out of ~/.local.
    mp = pytest.MonkeyPatch()
    state = tmp_path_factory.mktemp("state")
    mp.setenv("FLEETGATE_STATE_DIR", str(state))
    yield
    mp.undo()


def _serve(start: Callable[[], S]) -> Iterator[S]:
    """Start a session's server, fail (never skip) with the reason if it cannot run, stop it by PID at the end."""
    try:
        server = start()
    except (MissingBinary, ServerFailed) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """This session's own PostgreSQL cluster (superuser `postgres`, trust auth, a free port)."""
    yield from _serve(PostgresServer.start)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """This session's own Redis (nothing on disk, a free port)."""
    yield from _serve(RedisServer.start)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """This session's own NATS with JetStream (a free port)."""
    yield from _serve(NatsServer.start)


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis's URL; tests keep apart by key prefix."""
    return redis_server.url()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """The session NATS's URL; tests keep apart by stream name."""
    return nats_server.url


@pytest.fixture
async def pg_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"fg_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.url(name)
    admin = await asyncpg.connect(postgres_server.admin_url)
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


@pytest.fixture
async def gw(engine: FakeEngine) -> AsyncIterator[RunningGateway]:
    """A real gateway in front of `engine` (a module with its own `gw` overrides this one)."""
    async with running_gateway([engine.url]) as running:
        yield running
