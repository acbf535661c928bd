"""A gateway's components in the order they start (gateway.lifecycle stops them in reverse).

Everything a later component uses starts before it, so it stops after it: the databases first and last, the
engine client before every part that calls the engines, the outbox before the flusher that drains it and the
capture that writes to it (which stops first, so its last records get the flusher's last delivery), admission
last and first (queued requests are refused before anything they need goes away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from fleetgate.config import AUTO_KEY, Config
from fleetgate.db.engine import migrate
from fleetgate.gateway.lifecycle import Component
from fleetgate.gateway.parts import FleetParts, Gateway, MeteringParts
from fleetgate.tenancy.bootstrap_keys import revoke_published_demo_key
from fleetgate.tenancy.keys import hash_key
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore

log = logging.getLogger(__name__)


async def seed_demo_tenant(config: Config, store: TenantStore) -> None:
    """Create the demo tenant and its key the first time the key is seen; later the operator owns both, so a revoked
    demo key stays revoked and edits to the tenant are kept."""
    key = config.gateway.demo_api_key
    await revoke_published_demo_key(store, key)
    if key is None or key == AUTO_KEY or await store.lookup(hash_key(key)) is not None:
        return
    name = config.tenancy.demo_tenant
    if await store.get_tenant(name) is None:
        with contextlib.suppress(IntegrityError):  # another gateway process created it first
            await store.upsert_tenant(TenantSpec(external_id=name, name="Demo tenant"), managed_by="fleetgate")
    with contextlib.suppress(IntegrityError):  # idem
        await store.create_key(name, name="demo key", plaintext=key)


async def _migrate_until_done(engine: AsyncEngine, interval: float = 2.0) -> None:
    """Migrate a database that may not be reachable yet, retrying until it is."""
    warned = False
    while True:
        try:
            await migrate(engine)
            return
        except (SQLAlchemyError, OSError) as exc:
            if not warned:
                log.warning("ledger database unreachable (%s); retrying, events wait in the outbox", exc)
                warned = True
        await asyncio.sleep(interval)


class SeparateLedger:
    """A ledger database apart from the tenant store's: migrated in the background (it may be down at boot, and
    serving must not wait for it: events wait in the outbox), disposed of at the end."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._migration: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start migrating it."""
        self._migration = asyncio.create_task(_migrate_until_done(self._engine))

    async def stop(self) -> None:
        """Stop a migration still retrying; close the connections."""
        if self._migration is not None:
            self._migration.cancel()
            await asyncio.gather(self._migration, return_exceptions=True)
        await self._engine.dispose()


def _databases(gateway: Gateway) -> list[Component]:
    store = gateway.tenancy.store
    gate = gateway.tenancy.gate
    ledger_engine = gateway.metering.ledger.engine
    ledger: list[Component] = []
    if ledger_engine is not store.engine:
        separate = SeparateLedger(ledger_engine)
        ledger.append(Component("ledger database", separate.start, separate.stop))
    return [
        Component("tenant database", stop=store.close),
        Component("tenant schema", lambda: migrate(store.engine)),
        *ledger,
        Component("demo tenant", lambda: seed_demo_tenant(gateway.config, store)),
        Component("limiter", stop=gate.limiter.close),
        Component("tenant keys", gate.auth.start, gate.auth.stop),
        Component("price books", gate.start, gate.stop),  # before the first request needs one
    ]


def _metering(metering: MeteringParts) -> list[Component]:
    outbox = metering.outbox

    def open_outbox() -> None:
        outbox.open()
        outbox.start_fsync()

    return [
        Component("I/O log", metering.iolog.start, metering.iolog.stop),
        *(Component(f"sink {i}", stop=sink.close) for i, sink in enumerate(metering.sinks)),
        Component("outbox", open_outbox, outbox.close),
        Component("flusher", metering.flusher.start, metering.flusher.stop),  # one last delivery, bounded
        Component("capture", metering.capture.start, metering.capture.stop),  # pending finish records first
    ]


def _fleet(fleet: FleetParts) -> list[Component]:
    health, scraper = fleet.health, fleet.scraper

    async def start_health() -> None:
        await health.check_all()
        health.start()

    async def start_scraper() -> None:
        await scraper.scrape_all()
        scraper.start()

    return [
        Component("health checks", start_health, health.stop),
        Component("metrics scraper", start_scraper, scraper.stop),
        Component("adapter pool", lambda: fleet.adapters.start(fleet.registry), fleet.adapters.stop),
    ]


def components(gateway: Gateway) -> list[Component]:
    """Every component of `gateway`, in start order."""
    fleet, serving = gateway.fleet, gateway.serving
    admission = serving.admission
    return [
        *_databases(gateway),
        Component("adapter catalog", fleet.adapters.catalog.reload),
        Component("engine client", fleet.client.start, fleet.client.close),
        *_metering(gateway.metering),
        Component("time series", serving.timeseries.start, serving.timeseries.stop),
        *_fleet(fleet),
        *([Component("admission", admission.start, admission.stop)] if admission is not None else []),
    ]
