"""Open the tenant store from config for one CLI command, and close it again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

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

    try:
        return run_async(run())
    except FleetgateError as exc:
        fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        fail(f"tenant store {config.database.url.split('@')[-1]}: {exc}")
