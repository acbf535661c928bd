"""Active health checks and model discovery for every replica; the proxy adds passive marks on failures.

A replica is healthy only if a completion request would reach it: besides its health and model-list endpoints,
the check sends one malformed body to `/v1/chat/completions` through the hot path's own client (same TLS, path
prefix and key). Any answer but 401/403 (our key refused) or 404/405 (no such endpoint: a wrong path prefix)
proves the route; the engine rejects the body before any work. It runs when a replica is about to become healthy
and then every `route_interval` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from fleetgate.domain.background import Periodic
from fleetgate.engines.base import adapter_ids, model_ids
from fleetgate.engines.registry import adapter_for, detect_kind
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.fleet.upstream import UpstreamIOError

log = logging.getLogger(__name__)

ROUTE_PATH = "/v1/chat/completions"
ROUTE_PROBE_BODY = b"{"  # not JSON: every engine refuses it while parsing, before any model work
ROUTE_INTERVAL = 60.0


class Unhealthy(Exception):
    """The replica answered, but a request sent to it would fail; the message says why and what to fix."""


def refusal(status: int, url: str) -> str | None:
    """Why an engine's HTTP status means our requests cannot be served there, or None."""
    if status in (401, 403):
        return f"engine refused our API key ({status} from {url}): set the engine's api_key / api_key_env"
    if status in (404, 405):
        return f"engine has no such endpoint ({status} from {url}): check the URL's path prefix"
    return None


class HealthChecker:
    """Checks every replica each `interval` seconds and refreshes its model list."""

    def __init__(
        self,
        registry: ReplicaRegistry,
        client: EngineClient,
        interval: float,
        timeout: float,
        route_interval: float = ROUTE_INTERVAL,
    ) -> None:
        self._registry = registry
        self._client = client
        self._timeout = timeout
        self._route_interval = route_interval
        self._routes: dict[str, tuple[str, float]] = {}  # replica id -> (url, when its route was last proven)
        # The gateway probes every replica itself before it starts serving, so the loop waits one interval first.
        self._periodic = Periodic("fleetgate-health", self.check_all, interval, wait_first=True)

    async def check(self, replica: Replica) -> None:
        """Probe one replica and record the result."""
        adapter = adapter_for(replica.kind)
        epoch = replica.adapter_epoch
        try:
            if adapter.health_path != adapter.models_path:
                await self._get(replica.url + adapter.health_path)
            listing = await self._get(replica.url + adapter.models_path)
            models = model_ids(listing)
            await self._prove_route(replica)
        except (aiohttp.ClientError, TimeoutError, ValueError, Unhealthy, UpstreamIOError) as exc:
            reason = str(exc) if isinstance(exc, Unhealthy) else f"{type(exc).__name__}: {exc}"
            if replica.healthy:
                log.warning("replica %s unhealthy: %s", replica.id, reason)
            replica.mark(False, reason[:300])
            self._routes.pop(replica.id, None)
            return
        adapters = adapter_ids(listing)  # what the engine itself says is loaded
        if models - adapters:
            replica.models = models - adapters  # vLLM lists loaded adapters as models: they are not bases
        if replica.adapter_epoch == epoch and not replica.adapters_loading:
            # Only a list fetched after this gateway's last load or unload there says what is loaded now.
            replica.adapters = adapters
        if adapter.owned_by is None:
            # An engine named only by URL speaks the generic dialect until its model list signs it.
            replica.kind = detect_kind(listing) or replica.kind
            adapter = adapter_for(replica.kind)
        replica.context_len = adapter.context_len(listing) or replica.context_len
        if not replica.healthy:
            log.info("replica %s healthy (%s)", replica.id, ", ".join(sorted(replica.models)))
        replica.mark(True)

    async def _get(self, url: str) -> Any:
        """GET a JSON document; Unhealthy when the engine refuses our key or has no such endpoint."""
        try:
            return await self._client.get_json(url, self._timeout)
        except aiohttp.ClientResponseError as exc:
            if (why := refusal(exc.status, url)) is not None:
                raise Unhealthy(why) from None
            raise

    async def _prove_route(self, replica: Replica) -> None:
        """Send the probe through the hot path's client unless this URL's route was proven recently."""
        proven = self._routes.get(replica.id)
        now = time.monotonic()
        if (
            replica.healthy
            and proven is not None
            and proven[0] == replica.url
            and now - proven[1] < self._route_interval
        ):
            return
        async with asyncio.timeout(self._timeout):
            response = await self._client.upstream.post(replica.url, ROUTE_PATH, ROUTE_PROBE_BODY, self._timeout)
            try:
                await response.read()
            finally:
                response.close()
        if (why := refusal(response.status, replica.url + ROUTE_PATH)) is not None:
            raise Unhealthy(why)
        self._routes[replica.id] = (replica.url, now)

    async def check_all(self) -> None:
        """Probe every replica once, concurrently."""
        await asyncio.gather(*(self.check(r) for r in self._registry.all()))

    def start(self) -> None:
        """Run the periodic loop in the background."""
        self._periodic.start()

    async def stop(self) -> None:
        """Stop the periodic loop."""
        await self._periodic.stop()
