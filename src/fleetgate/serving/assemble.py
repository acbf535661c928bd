"""Wiring the hot path's stages from the gateway's parts."""

from __future__ import annotations

from typing import Any

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import ApiError, ErrorCode
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.iolog.log import IOLog
from fleetgate.lora.pool import AdapterPool
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.outbox import OutboxUnavailable
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.routing.router import FeedbackRouter
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.serving.admit import Admitter
from fleetgate.serving.forward import Forwarder
from fleetgate.serving.handler import CompletionHandler
from fleetgate.serving.outcome import RequestOutcome
from fleetgate.serving.record import Recorder
from fleetgate.tenancy.gate import TenantGate


class OutboxRefused(ApiError):
    """The start record could not be made durable, so the request is not served (503, counted)."""

    status = 503
    type = "server_error"
    code = ErrorCode.OVERLOADED


def build_handler(
    cfg: GatewayConfig,
    registry: ReplicaRegistry,
    router: FeedbackRouter,
    client: EngineClient,
    tenancy: tuple[TenantGate, AdmissionController | None, AdapterPool | None],
    metering: tuple[UsageCapture, IOLog | None, GatewayMetrics | None],
) -> CompletionHandler:
    """The completion handler over its four stages."""
    gate, admission, adapters = tenancy
    capture, iolog, metrics = metering
    recorder = Recorder(capture, gate, iolog, metrics)

    def begin(outcome: RequestOutcome, replica: Replica, payload: dict[str, Any]) -> None:
        # Never serve a request whose start record is not on disk: if the gateway died, nobody could bill it.
        try:
            capture.begin(outcome.measured(), replica, payload)
        except OutboxUnavailable as exc:
            raise OutboxRefused(
                f"{exc}; retry shortly",
                retry_after=exc.retry_after,
                reason="outbox",
            ) from None

    admitter = Admitter(cfg, gate, registry, adapters, admission, keeps_bodies=iolog is not None)
    forwarder = Forwarder(cfg, router, client, adapters, begin, recorder.write)
    return CompletionHandler(cfg, admitter, forwarder, recorder)
