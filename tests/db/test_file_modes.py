"""Files that hold keys, prompts or usage are this user's only: SQLite stores (with -wal/-shm), the I/O log, the
state and run dirs, whatever the umask; files of an older install are narrowed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from fleetgate.config import IOLogConfig
from fleetgate.db.engine import make_engine, migrate
from fleetgate.domain.paths import ensure_state_dir, open_private_log, private_dir, private_file
from fleetgate.iolog.log import IOLog


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    # The usual default umask: without care, new files would be 0644 and readable by every local user.
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_sqlite_store_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "new" / "fleetgate.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        await migrate(engine)
        async with engine.connect() as conn:  # an open WAL connection keeps -wal and -shm on disk
            await conn.execute(text("SELECT 1"))
            assert _mode(path.parent) == 0o700
            for name in ("fleetgate.db", "fleetgate.db-wal", "fleetgate.db-shm"):
                assert _mode(path.parent / name) == 0o600, name
    finally:
        await engine.dispose()


async def test_an_older_world_readable_store_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = make_engine(f"sqlite:///{path}")
    await migrate(first)
    await first.dispose()
    for name in ("old.db", "old.db-wal", "old.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)
    engine = make_engine(f"sqlite:///{path}")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        for name in ("old.db", "old.db-wal", "old.db-shm"):
            if (tmp_path / name).exists():
                assert _mode(tmp_path / name) == 0o600, name
    finally:
        await engine.dispose()


async def test_the_io_log_database_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "iolog.db"
    log = IOLog(IOLogConfig(url=f"sqlite:///{path}"))
    await log.start()
    try:
        log.record(
            request_id="r-1",
            tenant_id="t-1",
            key_id=None,
            model="smollm2",
            status="ok",
            request_body=b'{"messages": [{"role": "user", "content": "my secret plan"}]}',
            response_body=b'{"choices": []}',
            retention_days=None,
        )
        assert await log.flush()
        assert _mode(path) == 0o600
        assert not (tmp_path / "iolog.db-wal").exists() or _mode(tmp_path / "iolog.db-wal") == 0o600
    finally:
        await log.stop()


def test_state_dir_run_dir_and_logs_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(state))
    assert ensure_state_dir() == state and _mode(state) == 0o700  # an existing one is narrowed
    run = private_dir(state / "run")
    assert _mode(run) == 0o700
    fd = open_private_log(run / "logs" / "up.log")
    os.write(fd, b"the banner, keys included\n")
    os.close(fd)
    assert _mode(run / "logs") == 0o700 and _mode(run / "logs" / "up.log") == 0o600
    fd = open_private_log(run / "logs" / "up.log")  # appends, never truncates
    os.close(fd)
    assert (run / "logs" / "up.log").read_bytes() == b"the banner, keys included\n"
    other = tmp_path / "other.txt"
    other.write_text("kept")
    os.chmod(other, 0o644)
    private_file(other)
    assert _mode(other) == 0o600 and other.read_text() == "kept"
