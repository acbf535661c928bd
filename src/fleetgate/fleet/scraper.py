"""Reads every replica's `/metrics` each second and leaves the snapshot on `replica.metrics` for the router."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from fleetgate.domain.background import Periodic
from fleetgate.engines.base import SlotsSource
from fleetgate.engines.registry import adapter_for
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.metrics import parse_metrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry

log = logging.getLogger(__name__)

_FAILURES = (aiohttp.ClientError, TimeoutError, ValueError)


class MetricsScraper:
    """Scrapes each replica every `interval` s; a snapshot older than `stale_after` s is not trusted by scorers.

    A failed scrape leaves the previous snapshot in place: its age makes it stale, so the router falls back to
    its own in-flight counts instead of acting on numbers that stopped moving.
    """

    def __init__(
        self,
        registry: ReplicaRegistry,
        client: EngineClient,
        interval: float = 1.0,
        stale_after: float = 5.0,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._client = client
        self.interval = interval
        self.stale_after = stale_after
        self._timeout = timeout if timeout is not None else max(0.2, min(interval, 2.0))
        self._clock = clock
        self._slots: dict[str, tuple[str, int]] = {}  # replica id -> (url, total_slots): fixed while the url is
        self._periodic = Periodic("fleetgate-scraper", self.scrape_all, interval, clock=clock)
        self.errors: dict[str, int] = {}  # scrape failures per replica, for the operator's metrics

    async def scrape(self, replica: Replica) -> bool:
        """Scrape one replica now; True if its snapshot was refreshed."""
        adapter = adapter_for(replica.kind)
        if adapter.metric_names is None or adapter.metrics_path is None:
            return False
        try:
            slots = await self._total_slots(replica, adapter.slots)
            text = await self._get_text(replica.url + adapter.metrics_path)
            replica.metrics = parse_metrics(adapter.metric_names, text, self._clock(), slots)
        except _FAILURES as exc:
            self.errors[replica.id] = self.errors.get(replica.id, 0) + 1
            log.debug("scrape of %s failed: %s", replica.id, exc or type(exc).__name__)
            return False
        return True

    async def scrape_all(self) -> None:
        """Scrape every replica once, concurrently."""
        await asyncio.gather(*(self.scrape(r) for r in self._registry.all()))

    def is_fresh(self, replica: Replica) -> bool:
        """True if the replica has a snapshot younger than `stale_after`."""
        metrics = replica.metrics
        return metrics is not None and metrics.fresh(self._clock(), self.stale_after)

    def start(self) -> None:
        """Run the periodic loop in the background."""
        self._periodic.start()

    async def stop(self) -> None:
        """Stop the periodic loop."""
        await self._periodic.stop()

    async def _get_text(self, url: str) -> str:
        async with self._client.session.get(url, timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=body[:200].decode(errors="replace")
                )
            return body.decode()

    async def _total_slots(self, replica: Replica, source: SlotsSource | None) -> int | None:
        if source is None:
            return None
        known = self._slots.get(replica.id)
        if known is not None and known[0] == replica.url:
            return known[1]
        slots = source.read(await self._client.get_json(replica.url + source.path, self._timeout))
        if slots is None:
            return None  # asked again next time
        self._slots[replica.id] = (replica.url, slots)
        return slots
