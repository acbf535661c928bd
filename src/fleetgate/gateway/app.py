"""ASGI assembly and lifespan: the pooled client, health checks, and the /v1 routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from fleetgate.api import openai
from fleetgate.api.adapters import admin_adapters_router
from fleetgate.api.admin import build_admin_app
from fleetgate.api.iolog import iolog_routes
from fleetgate.api.usage import admin_usage_router, usage_routes
from fleetgate.billing.price_books import PriceBooks
from fleetgate.billing.rating import Rating, names_from_store
from fleetgate.config import AUTO_KEY, Config, EngineEndpoint
from fleetgate.db.engine import make_engine, migrate, sqlite_path
from fleetgate.domain.errors import ApiError
from fleetgate.domain.paths import default_state_dir, ensure_state_dir
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.health import HealthChecker
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.fleet.scraper import MetricsScraper
from fleetgate.http.errors import api_error_handler, error_response, http_exception_handler, internal_error_handler
from fleetgate.iolog.log import IOLog
from fleetgate.lora.catalog import AdapterCatalog, AdapterStore
from fleetgate.lora.pool import AdapterPool
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.events import Sink
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.ledger import SqlLedger
from fleetgate.metering.ledger_worker import LedgerWorker
from fleetgate.metering.outbox import Outbox
from fleetgate.observability.dashboard import admin_key_check, dashboard_routes, ledger_usage_today
from fleetgate.observability.metrics import GatewayMetrics, StateCollector
from fleetgate.observability.readiness import Readiness
from fleetgate.observability.timeseries import TimeSeries
from fleetgate.routing.filters import HasRoom
from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.plugins import make_router
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.serving.assemble import build_handler
from fleetgate.serving.handler import CompletionHandler
from fleetgate.tenancy.auth import TenantAuthenticator
from fleetgate.tenancy.bootstrap_keys import resolve_keys, revoke_published_demo_key
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.keys import hash_key
from fleetgate.tenancy.limits.factory import make_limiter
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.secret_check import SecretCheck
from fleetgate.tenancy.store import TenantStore

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """The parts one gateway process is made of."""

    config: Config
    registry: ReplicaRegistry
    client: EngineClient
    completions: CompletionHandler
    admission: AdmissionController | None
    health: HealthChecker
    store: TenantStore
    gate: TenantGate
    outbox: Outbox
    capture: UsageCapture
    flusher: Flusher
    ledger: SqlLedger
    sinks: list[Sink]
    iolog: IOLog
    metrics: GatewayMetrics
    router: RoutingPipeline
    scraper: MetricsScraper
    timeseries: TimeSeries
    adapters: AdapterPool


def remote_replicas(engines: list[EngineEndpoint]) -> list[Replica]:
    """Registry entries for engines started elsewhere (ConfigError when an engine's api_key_env is unset)."""
    return [Replica.from_endpoint(i, e) for i, e in enumerate(engines)]


def build_gateway(config: Config, registry: ReplicaRegistry) -> Gateway:
    """Wire the gateway's parts from config; nothing connects until the app's lifespan starts."""
    ensure_state_dir()
    resolve_keys(config)  # `auto` keys: generated once, read from the key file afterwards
    client = EngineClient(config.gateway, registry)
    store = TenantStore(make_engine(config.database.url, config.database))
    auth = TenantAuthenticator(store, config.tenancy.poll_interval)
    limiter = make_limiter(
        config.limits.backend,
        config.limits.redis_url,
        config.limits.on_redis_error,
        lease_seconds=config.limits.lease_seconds,
        settle_queue=config.limits.settle_queue,
    )
    metering = config.metering
    outbox = Outbox(
        metering.outbox_dir or default_state_dir() / "outbox",
        metering.segment_bytes,
        metering.fsync_interval,
        max_bytes=metering.outbox_max_bytes,
        min_free_bytes=metering.outbox_min_free_bytes,
    )
    capture = UsageCapture(outbox, client, metering.tokenize_after)
    ledger_engine = (
        store.engine
        if metering.ledger_url in (None, config.database.url)
        else make_engine(metering.ledger_url, config.database)
    )
    ledger = SqlLedger(ledger_engine, batch_size=metering.batch_size)
    # Budgets charge at the ledger's price books (the ones invoices are rated with), held in memory.
    gate = TenantGate(auth, limiter, PriceBooks(ledger_engine, config.prices))
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
    iolog = IOLog(config.iolog)
    metrics = GatewayMetrics(config.observability.max_tenant_labels)
    admission = AdmissionController(config.admission, registry) if config.admission.enabled else None
    if admission is not None:
        admission.wait_observer = metrics.observe_wait
    # With admission on, an admitted request goes to a replica with room for it (see HasRoom).
    room = [HasRoom(admission.replica_allowance)] if admission is not None else []
    router = make_router(config.routing.policy, config.routing.params, extra_filters=room)
    scraper = MetricsScraper(
        registry, client, config.routing.scrape_interval, config.admission.stale_after, config.routing.scrape_timeout
    )
    catalog = AdapterCatalog(AdapterStore(store.engine))
    auth.listeners.append(catalog.reload)
    pool = AdapterPool(
        client,
        catalog,
        max_per_replica=config.adapters.max_per_replica,
        load_timeout=config.adapters.load_timeout,
        pin_interval=config.adapters.pin_interval,
    )
    pool.observer = metrics.observe_adapter
    handler = build_handler(
        config.gateway, registry, router, client, (gate, admission, pool), (capture, iolog, metrics)
    )
    metrics.add_collector(
        StateCollector(registry, outbox, flusher, iolog, lambda: handler.in_flight, admission, router)
    )
    health = HealthChecker(registry, client, config.gateway.health_interval, timeout=2.0)
    timeseries = TimeSeries(metrics.registry, registry)
    handler.forwarder.decisions = timeseries.record_decision
    return Gateway(
        config,
        registry,
        client,
        handler,
        admission,
        health,
        store,
        gate,
        outbox,
        capture,
        flusher,
        ledger,
        sinks,
        iolog,
        metrics,
        router,
        scraper,
        timeseries,
        pool,
    )


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


def _peer(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


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


def build_app(gateway: Gateway) -> openai.FastLane:
    """The ASGI app for a gateway: the completion paths on a fast lane in front of the Starlette app."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await migrate(gateway.store.engine)
        ledger_migration: asyncio.Task[None] | None = None
        if gateway.ledger.engine is not gateway.store.engine:
            # A separate ledger may be down at boot: serving must not wait for it (events wait in the outbox).
            ledger_migration = asyncio.create_task(_migrate_until_done(gateway.ledger.engine))
        await seed_demo_tenant(gateway.config, gateway.store)
        await gateway.gate.auth.start()
        await gateway.gate.start()  # the price books, before the first request needs one
        await gateway.adapters.catalog.reload()
        await gateway.client.start()
        await gateway.iolog.start()
        gateway.outbox.open()
        gateway.outbox.start_fsync()
        gateway.capture.start()
        gateway.flusher.start()
        await gateway.health.check_all()
        gateway.health.start()
        gateway.timeseries.start()
        await gateway.scraper.scrape_all()
        gateway.scraper.start()
        gateway.adapters.start(gateway.registry)
        if gateway.admission is not None:
            gateway.admission.start()
        try:
            yield
        finally:
            if gateway.admission is not None:
                await gateway.admission.stop()
            await gateway.timeseries.stop()
            await gateway.adapters.stop()
            await gateway.health.stop()
            await gateway.scraper.stop()
            await gateway.capture.stop()  # pending finish records (prompt counts of aborted requests)
            await gateway.flusher.stop()  # one last delivery to the ledger, bounded
            gateway.outbox.close()
            await gateway.iolog.stop()
            await gateway.client.close()
            await gateway.gate.auth.stop()
            await gateway.gate.stop()
            await gateway.gate.limiter.close()
            for sink in gateway.sinks:
                await sink.close()
            if ledger_migration is not None:
                ledger_migration.cancel()
                await asyncio.gather(ledger_migration, return_exceptions=True)
            if gateway.ledger.engine is not gateway.store.engine:
                await gateway.ledger.engine.dispose()
            await gateway.store.close()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    readiness = Readiness(
        gateway.registry,
        gateway.store,
        lambda: len(getattr(gateway.gate.auth, "_cache", ())),  # keys that authenticate without the store
        gateway.ledger.engine,
        gateway.flusher,
        gateway.outbox,
        gateway.gate.limiter,
    )

    async def readyz(request: Request) -> JSONResponse:
        # Each dependency's state; 503 only when no request could be served (observability/readiness.py).
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    failures = gateway.gate.auth.failures
    metrics_check = SecretCheck(
        [gateway.config.observability.metrics_token, gateway.config.gateway.admin_api_key],
        failures=failures,
        asked="/metrics names tenants: send observability.metrics_token or the admin key as"
        " `Authorization: Bearer <token>` (Prometheus: `authorization: {credentials: <token>}`)",
        disabled="/metrics needs credentials: set observability.metrics_token (or gateway.admin_api_key)",
    )

    async def metrics(request: Request) -> Response:
        try:
            metrics_check.verify(request.headers.get("authorization"), client=_peer(request))
        except ApiError as exc:
            return error_response(exc, request.headers.get("x-request-id"))
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *openai.routes(gateway.completions, gateway.gate, gateway.registry, gateway.adapters),
        *iolog_routes(gateway.iolog, gateway.gate.auth.authenticate),
    ]
    rating = Rating(
        gateway.ledger.engine, policy=gateway.config.prices.policy, tenant_names=names_from_store(gateway.store)
    )
    routes += usage_routes(gateway.ledger, rating, gateway.gate.auth.authenticate)
    routes += dashboard_routes(
        gateway.timeseries,
        gateway.registry,
        ledger_usage_today(gateway.ledger, rating),
        admin_key_check(gateway.config.gateway.admin_api_key, failures),
        gateway.gate.auth.authenticate,
    )
    admin_key = gateway.config.gateway.admin_api_key
    if admin_key is not None:
        admin = build_admin_app(
            gateway.store,
            gateway.registry,
            admin_key,
            [admin_usage_router(gateway.ledger, rating), admin_adapters_router(gateway.adapters, gateway.registry)],
            failures=failures,
        )
        routes.append(Mount("/admin", app=admin))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_exception_handler,
            Exception: internal_error_handler,
        },
    )
    return openai.FastLane(app, gateway.completions)
