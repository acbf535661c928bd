"""Open the tenant store (or any database) from config for one CLI command, and close it again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from fleetgate.cli.common import fail, load, run_async
from fleetgate.domain.errors import FleetgateError
from fleetgate.tenancy.store import TenantStore

T = TypeVar("T")


def with_store(config_path: Path | None, action: Callable[[TenantStore], Awaitable[T]]) -> T:
    """Run `action` against the configured store; turn store and API errors into a clear exit."""
    config = load(config_path)

    async def run() -> T:
        store = await TenantStore.open(config.database.url)
        try:
            return await action(store)
        finally:
            await store.close()

    return run_on_database(run(), "tenant store", config.database.url)


def run_on_database(work: Coroutine[Any, Any, T], what: str, url: str) -> T:
    """Run `work`; exit with a clear message when it fails (the database named by `what` and its host, never its
    credentials)."""
    try:
        return run_async(work)
    except FleetgateError as exc:
        fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        fail(f"{what} {url.split('@')[-1]}: {exc}")
