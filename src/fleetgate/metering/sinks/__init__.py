"""Optional downstream sinks for usage events; each implements `fleetgate.metering.events.Sink`.

Sink modules are imported only when configured (e.g. `fleetgate.metering.sinks.nats` needs `nats-py`),
so this package itself imports nothing optional.
"""

from __future__ import annotations

from fleetgate.domain.errors import FleetgateError


class SinkError(FleetgateError):
    """A sink could not deliver a batch; the flusher keeps the batch and retries it later."""


__all__ = ["SinkError"]
