"""Wiring a gateway's parts from config, one concept at a time; nothing connects until gateway.components starts
them."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from fleetgate.billing.price_books import PriceBooks
from fleetgate.config import Config, EngineEndpoint
from fleetgate.db.engine import make_engine, sqlite_path
from fleetgate.domain.paths import default_state_dir, ensure_state_dir
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.discovery.static import endpoint_spec
from fleetgate.fleet.health import HealthChecker
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.fleet.scraper import MetricsScraper
from fleetgate.gateway.parts import FleetParts, Gateway, MeteringParts, ServingParts, TenancyParts
from fleetgate.iolog.log import IOLog
from fleetgate.lora.catalog import AdapterCatalog, AdapterStore
from fleetgate.lora.pool import AdapterPool
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.events import Sink
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.ledger import SqlLedger
from fleetgate.metering.ledger_worker import LedgerWorker
from fleetgate.metering.outbox import Outbox
from fleetgate.observability.collectors import DeliveryCollector, FleetCollector, GatewayCollector
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.observability.timeseries import TimeSeries
from fleetgate.routing.filters import HasRoom
from fleetgate.routing.plugins import make_router
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.serving.assemble import build_handler
from fleetgate.tenancy.auth import TenantAuthenticator
from fleetgate.tenancy.bootstrap_keys import resolve_keys
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.limits.factory import make_limiter
from fleetgate.tenancy.store import TenantStore


def remote_replicas(engines: list[EngineEndpoint]) -> list[Replica]:
    """Registry entries for engines started elsewhere (ConfigError when an engine's api_key_env is unset)."""
    return [endpoint_spec(i, e).replica() for i, e in enumerate(engines)]


def build_gateway(config: Config, registry: ReplicaRegistry) -> Gateway:
    """Wire the gateway's parts from config; nothing connects until the app's lifespan starts."""
    ensure_state_dir()
    resolve_keys(config)  # `auto` keys: generated once, read from the key file afterwards
    client = EngineClient(config.gateway, registry)
    store = TenantStore(make_engine(config.database.url, config.database))
    metering = build_metering(config, store.engine, client)
    tenancy = build_tenancy(config, store, metering.ledger.engine)
    metrics = GatewayMetrics(config.observability.max_tenant_labels)
    fleet = build_fleet(config, registry, client, tenancy, metrics)
    serving = build_serving(config, fleet, tenancy, metering, metrics)
    return Gateway(config, fleet, tenancy, metering, serving)


def build_metering(config: Config, store_engine: AsyncEngine, client: EngineClient) -> MeteringParts:
    """The outbox, its capture, the ledger (the tenant database unless metering.ledger_url names another), the
    sinks, the flusher that delivers to them, and the I/O log."""
    metering = config.metering
    outbox = Outbox(
        metering.outbox_dir or default_state_dir() / "outbox",
        metering.segment_bytes,
        metering.fsync_interval,
        max_bytes=metering.outbox_max_bytes,
        min_free_bytes=metering.outbox_min_free_bytes,
    )
    url = metering.ledger_url
    ledger_engine = store_engine if url in (None, config.database.url) else make_engine(url, config.database)
    ledger = SqlLedger(ledger_engine, batch_size=metering.batch_size)
    sinks: list[Sink] = []
    if metering.nats is not None:
        from fleetgate.metering.sinks.nats import NatsSink  # optional dependency: only when configured

        sinks.append(NatsSink(metering.nats))
    ledger_file = sqlite_path(metering.ledger_url or config.database.url)
    worker = (
        LedgerWorker(ledger_file, metering.batch_size, metering.ledger_worker_min_bytes)
        if ledger_file is not None and metering.ledger_worker_min_bytes is not None
        else None
    )
    flusher = Flusher(
        outbox,
        ledger,
        sinks,
        metering.flush_interval,
        metering.batch_size,
        worker,
        sink_max_backlog_bytes=metering.sink_max_backlog_bytes,
        dead_letter_max_bytes=metering.dead_letter_max_bytes,
    )
    capture = UsageCapture(outbox, client, metering.tokenize_after)
    return MeteringParts(outbox, capture, flusher, ledger, sinks, IOLog(config.iolog))


def build_tenancy(config: Config, store: TenantStore, ledger_engine: AsyncEngine) -> TenancyParts:
    """The tenant store and the gate: keys, limits, and budgets charged at the ledger's price books (the ones
    invoices are rated with), held in memory."""
    auth = TenantAuthenticator(store, config.tenancy.poll_interval)
    limiter = make_limiter(
        config.limits.backend,
        config.limits.redis_url,
        config.limits.on_redis_error,
        lease_seconds=config.limits.lease_seconds,
        settle_queue=config.limits.settle_queue,
    )
    return TenancyParts(store, TenantGate(auth, limiter, PriceBooks(ledger_engine, config.prices)))


def build_fleet(
    config: Config,
    registry: ReplicaRegistry,
    client: EngineClient,
    tenancy: TenancyParts,
    metrics: GatewayMetrics,
) -> FleetParts:
    """Health checks, metric scrapes and the LoRA adapter pool over the replicas."""
    health = HealthChecker(registry, client, config.gateway.health_interval, timeout=2.0)
    scraper = MetricsScraper(
        registry, client, config.routing.scrape_interval, config.admission.stale_after, config.routing.scrape_timeout
    )
    catalog = AdapterCatalog(AdapterStore(tenancy.store.engine))
    tenancy.gate.auth.listeners.append(catalog.reload)  # adapter grants move with the tenancy revision
    adapters = AdapterPool(
        client,
        catalog,
        max_per_replica=config.adapters.max_per_replica,
        load_timeout=config.adapters.load_timeout,
        pin_interval=config.adapters.pin_interval,
    )
    adapters.observer = metrics.observe_adapter
    return FleetParts(registry, client, health, scraper, adapters)


def build_serving(
    config: Config,
    fleet: FleetParts,
    tenancy: TenancyParts,
    metering: MeteringParts,
    metrics: GatewayMetrics,
) -> ServingParts:
    """The completion handler over its stages, admission in front of it, and what watches it."""
    registry = fleet.registry
    admission = AdmissionController(config.admission, registry) if config.admission.enabled else None
    if admission is not None:
        admission.wait_observer = metrics.observe_wait
    # With admission on, an admitted request goes to a replica with room for it (see HasRoom).
    room = [HasRoom(admission.replica_allowance)] if admission is not None else []
    router = make_router(config.routing.policy, config.routing.params, extra_filters=room)
    handler = build_handler(
        config.gateway,
        registry,
        router,
        fleet.client,
        (tenancy.gate, admission, fleet.adapters),
        (metering.capture, metering.iolog, metrics),
    )
    metrics.add_collector(FleetCollector(registry, router))
    metrics.add_collector(DeliveryCollector(metering.outbox, metering.flusher))
    metrics.add_collector(GatewayCollector(lambda: handler.in_flight, admission, metering.iolog))
    timeseries = TimeSeries(metrics.registry, registry)
    handler.forwarder.decisions = timeseries.record_decision
    return ServingParts(handler, admission, metrics, timeseries)
