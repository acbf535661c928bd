"""Failed authentications, limited per client address: a token bucket each, in bounded memory.

Every failure (unknown, revoked or expired key, wrong admin key, missing header) takes a token from its address's
bucket; `burst` failures in a row are free, then one per `1 / rate` seconds. An address with an empty bucket is
answered 429 before any key is looked up, so random keys cannot turn into tenant-store queries. IPv6 addresses
share one bucket per /64 (one host usually holds a whole /64). Only addresses with recent failures are kept, at most
`max_addresses`: past that the least recently failing ones are forgotten (their buckets were the fullest anyway).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

from fleetgate.domain.errors import RateLimited

DEFAULT_BURST = 20
DEFAULT_RATE = 1.0  # failures per second once the burst is spent
DEFAULT_MAX_ADDRESSES = 65_536


def address_key(client: str) -> str:
    """The bucket an address counts against: itself for IPv4, its /64 for IPv6."""
    if ":" not in client:
        return client
    try:
        return str(ipaddress.IPv6Network((client.split("%", 1)[0], 64), strict=False))
    except ValueError:
        return client


class FailureLimiter:
    """Token buckets of failed authentications per client address."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        rate: float = DEFAULT_RATE,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.max_addresses = max_addresses
        self._clock = clock
        # address key -> (tokens left, when counted); most recently failing last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0  # requests answered 429 because their address was over the limit

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        tokens, at = entry
        return min(self.burst, tokens + (now - at) * self.rate)

    def retry_after(self, client: str | None) -> float | None:
        """Seconds until this address may try again, or None when it may try now (or is unknown)."""
        if client is None or not self._buckets:
            return None
        now = self._clock()
        tokens = self._tokens(address_key(client), now)
        if tokens >= 1.0:
            return None
        return (1.0 - tokens) / self.rate

    def check(self, client: str | None) -> None:
        """Raise 429 (with Retry-After) if this address failed too often; nothing is looked up before this."""
        wait = self.retry_after(client)
        if wait is not None:
            self.refused += 1
            raise RateLimited(
                "too many failed authentication attempts from your address: check your API key, then retry after"
                " the delay",
                retry_after=wait,
                reason="auth_failures",
            )

    def failed(self, client: str | None) -> None:
        """Count one failed authentication from this address."""
        if client is None:
            return
        now = self._clock()
        key = address_key(client)
        tokens = max(0.0, self._tokens(key, now) - 1.0)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
