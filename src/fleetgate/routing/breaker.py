"""A circuit breaker per replica: stop sending to a replica that keeps failing, probe it, re-admit it."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from fleetgate.routing.params import param, parameters

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    """closed: traffic flows; open: none; half_open: one probe at a time."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@parameters
class BreakerSettings:
    """Thresholds of every replica's breaker: `routing.params.breaker`."""

    failures: int = param(5, ge=1)  # this many failures ...
    window: float = param(10.0, gt=0)  # ... within this many seconds open the breaker
    cooldown: float = param(5.0, ge=0)  # seconds open before a probe may go through (half-open)
    successes: int = param(2, ge=1)  # consecutive probe successes that close it again
    probe_timeout: float = param(30.0, gt=0)  # a probe that never reports (lost task) frees its slot after this


class Breaker:
    """One replica's breaker; every method takes the current time so tests drive it with a fake clock."""

    def __init__(self, settings: BreakerSettings) -> None:
        self._s = settings
        self.state = BreakerState.CLOSED
        self._failures: deque[float] = deque(maxlen=settings.failures)
        self._opened_at = 0.0
        self._probe_at: float | None = None  # when the in-flight half-open probe was let through
        self._probe_successes = 0

    def _tick(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now - self._opened_at >= self._s.cooldown:
            self.state = BreakerState.HALF_OPEN
            self._probe_at = None
            self._probe_successes = 0

    def _probe_free(self, now: float) -> bool:
        return self._probe_at is None or now - self._probe_at >= self._s.probe_timeout

    def available(self, now: float) -> bool:
        """Would a request be let through now? Does not claim the half-open probe (filters ask this)."""
        self._tick(now)
        if self.state is BreakerState.CLOSED:
            return True
        return self.state is BreakerState.HALF_OPEN and self._probe_free(now)

    def allow(self, now: float) -> bool:
        """Let one request through if the state permits; in half-open this claims the single probe slot."""
        if not self.available(now):
            return False
        if self.state is BreakerState.HALF_OPEN:
            self._probe_at = now
        return True

    def success(self, now: float) -> None:
        """A request to this replica succeeded."""
        self._tick(now)
        if self.state is BreakerState.HALF_OPEN:
            self._probe_at = None
            self._probe_successes += 1
            if self._probe_successes >= self._s.successes:
                self.state = BreakerState.CLOSED
                self._failures.clear()

    def failure(self, now: float) -> None:
        """A request to this replica failed (connect error, timeout, 5xx)."""
        self._tick(now)
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)  # the probe failed: wait a full cool-down again
        elif self.state is BreakerState.CLOSED:
            self._failures.append(now)
            if len(self._failures) == self._s.failures and now - self._failures[0] <= self._s.window:
                self._open(now)
        # OPEN: a late answer to a request sent before it opened; the cool-down stands.

    def release(self, now: float) -> None:
        """The request ended without a verdict (client hung up): free the probe slot, count nothing."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_at = None

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._probe_at = None
        self._failures.clear()


class BreakerRegistry:
    """The breakers of every replica, by id, created on first use."""

    def __init__(self, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._by_id: dict[str, Breaker] = {}
        self._tripped: set[str] = set()  # ids not known to be closed: the filter's fast path skips the rest
        self.opened: dict[str, int] = {}  # times each replica's breaker opened, for the operator's metrics

    @property
    def any_tripped(self) -> bool:
        """False when every breaker is closed (the common case): filtering can be skipped."""
        return bool(self._tripped)

    def _get(self, replica_id: str) -> Breaker:
        breaker = self._by_id.get(replica_id)
        if breaker is None:
            breaker = self._by_id[replica_id] = Breaker(self.settings)
        return breaker

    def available(self, replica_id: str) -> bool:
        """Would a request to this replica be let through (without claiming a probe)?"""
        breaker = self._by_id.get(replica_id)
        return breaker is None or breaker.available(self._clock())

    def allow(self, replica_id: str) -> bool:
        """Let a request through to this replica, claiming the half-open probe if that is the state."""
        breaker = self._by_id.get(replica_id)
        return breaker is None or breaker.allow(self._clock())

    def success(self, replica_id: str) -> None:
        """Record a success."""
        breaker = self._by_id.get(replica_id)
        if breaker is not None:
            before = breaker.state
            breaker.success(self._clock())
            if before is not BreakerState.CLOSED and breaker.state is BreakerState.CLOSED:
                self._tripped.discard(replica_id)
                log.info("replica %s: circuit closed", replica_id)

    def failure(self, replica_id: str) -> None:
        """Record a failure."""
        breaker = self._get(replica_id)
        before = breaker.state
        breaker.failure(self._clock())
        if breaker.state is BreakerState.OPEN and before is not BreakerState.OPEN:
            self._tripped.add(replica_id)
            self.opened[replica_id] = self.opened.get(replica_id, 0) + 1
            log.warning("replica %s: circuit open", replica_id)

    def release(self, replica_id: str) -> None:
        """A request ended with no verdict on the replica."""
        breaker = self._by_id.get(replica_id)
        if breaker is not None:
            breaker.release(self._clock())

    def state(self, replica_id: str) -> BreakerState:
        """The replica's breaker state now."""
        breaker = self._by_id.get(replica_id)
        if breaker is None:
            return BreakerState.CLOSED
        breaker.available(self._clock())  # advances open -> half-open when the cool-down is over
        return breaker.state

    def forget(self, replica_id: str) -> None:
        """Drop a replica that left the fleet."""
        self._by_id.pop(replica_id, None)
        self._tripped.discard(replica_id)

    def snapshot(self) -> dict[str, str]:
        """State of every breaker that has seen a failure."""
        return {rid: str(self.state(rid)) for rid in self._by_id}
