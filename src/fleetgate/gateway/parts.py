"""What one gateway process is made of, grouped by concept (gateway.build wires them, gateway.components runs them)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetgate.config import Config
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.health import HealthChecker
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.fleet.scraper import MetricsScraper
from fleetgate.iolog.log import IOLog
from fleetgate.lora.pool import AdapterPool
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.events import Sink
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.ledger import SqlLedger
from fleetgate.metering.outbox import Outbox
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.observability.timeseries import TimeSeries
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.serving.handler import CompletionHandler
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.store import TenantStore


@dataclass
class FleetParts:
    """The replicas and how the gateway reaches them: health checks, metric scrapes, LoRA adapters loaded on them."""

    registry: ReplicaRegistry
    client: EngineClient
    health: HealthChecker
    scraper: MetricsScraper
    adapters: AdapterPool


@dataclass
class TenancyParts:
    """Who may call: the tenant store, and the gate (keys, limits, budgets at the ledger's price books)."""

    store: TenantStore
    gate: TenantGate


@dataclass
class MeteringParts:
    """What was used and said: the outbox, its capture and delivery to the ledger and sinks, the I/O log."""

    outbox: Outbox
    capture: UsageCapture
    flusher: Flusher
    ledger: SqlLedger
    sinks: list[Sink]
    iolog: IOLog


@dataclass
class ServingParts:
    """The hot path and what watches it: the completion handler, admission, the gateway's metrics and charts."""

    completions: CompletionHandler
    admission: AdmissionController | None
    metrics: GatewayMetrics
    timeseries: TimeSeries


@dataclass
class Gateway:
    """One gateway process: its config and its parts."""

    config: Config
    fleet: FleetParts
    tenancy: TenancyParts
    metering: MeteringParts
    serving: ServingParts
