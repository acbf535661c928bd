"""Record: the one place a request's outcome becomes a finish record, an I/O log entry, a limit settlement and
metrics — whatever way it ended (served, refused, failed, abandoned, or a gateway bug)."""

from __future__ import annotations

import time

from fleetgate.domain.usage import NO_USAGE, Usage
from fleetgate.iolog.log import IOLog
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.events import UNBILLED_STATUSES
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.serving.outcome import RequestOutcome
from fleetgate.tenancy.gate import Admission, TenantGate


class Recorder:
    """Writes what a request did, exactly once, and frees what it held."""

    def __init__(
        self, capture: UsageCapture, gate: TenantGate, iolog: IOLog | None, metrics: GatewayMetrics | None
    ) -> None:
        self.capture = capture
        self.gate = gate
        self.iolog = iolog
        self.metrics = metrics

    def write(self, outcome: RequestOutcome) -> None:
        """The finish record (and the I/O log entry), once; the relay calls this before the client's last byte."""
        if outcome.recorded or not outcome.tenant_id:  # an unauthenticated request has no tenant to bill or log
            return
        outcome.recorded = True
        self.capture.finish(outcome.measured())
        if outcome.request_body is not None and self.iolog is not None:
            self.iolog.record(
                request_id=outcome.request_id,
                tenant_id=outcome.tenant_id,
                key_id=outcome.key_id,
                model=outcome.model,
                status=outcome.status,
                request_body=outcome.request_body,
                response_body=b"".join(outcome.response_parts or ()),
                retention_days=outcome.io_retention_days,
            )

    async def finish(self, outcome: RequestOutcome, admission: Admission | None) -> None:
        """Record the outcome and settle the tenant's limits; never raises for a recording problem of its own."""
        self.write(outcome)
        if admission is not None:
            await self.gate.settle(admission, self._billed_usage(outcome), outcome.content_events)
        if self.metrics is not None:
            self.metrics.observe(outcome, outcome.route, time.time())

    @staticmethod
    def _billed_usage(outcome: RequestOutcome) -> Usage | None:
        # Nothing reached an engine, or the gateway failed the request: the tenant is charged nothing.
        if not outcome.begun or outcome.status in UNBILLED_STATUSES:
            return NO_USAGE
        return outcome.usage  # None: settle counts what was relayed (engine usage never came)

    def refused(self, outcome: RequestOutcome, reason: str | None) -> None:
        """Count a refusal by a tenant limit or the queue (not one before authentication: it has no tenant)."""
        if reason is not None and self.metrics is not None and outcome.tenant_name:
            self.metrics.rejected(outcome.tenant_name, reason)
