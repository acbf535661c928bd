"""Bearer-key authentication against the tenant store, through an in-memory cache invalidated by revision polling.

Unknown keys are cached too (bounded), and failures are limited per client address (tenancy/failures.py): an
address over its limit is answered 429 before any lookup, so a flood of random keys costs no store queries. A key
already in the cache is served even then, so tenants behind the same address as a prober keep working.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from fleetgate.domain.background import Periodic
from fleetgate.domain.errors import AuthenticationFailed, PermissionDenied, UpstreamUnavailable
from fleetgate.tenancy.failures import FailureLimiter
from fleetgate.tenancy.keys import hash_key
from fleetgate.tenancy.models import ApiKeyInfo, Tenant
from fleetgate.tenancy.store import TenantStore

log = logging.getLogger(__name__)

_MAX_CACHED = 100_000
_MAX_NEGATIVE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: the key and its tenant."""

    key: ApiKeyInfo
    tenant: Tenant


class Authenticate(Protocol):
    """What routes that name a tenant call: `TenantAuthenticator.authenticate` (or a stand-in in tests)."""

    def __call__(self, authorization: bytes | None, *, client: str | None = None) -> Awaitable[Principal]:
        """The principal for an Authorization header sent from `client` (the peer address), or 401/403/429."""
        ...


def bearer_token(authorization: bytes | None) -> str:
    """Extract the key from an `Authorization: Bearer <key>` header value, or fail with 401."""
    if not authorization:
        raise AuthenticationFailed("missing API key: send it as `Authorization: Bearer <key>`")
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected `Bearer <key>`")
    return token


class TenantAuthenticator:
    """Maps keys to tenants; a revoked key or suspended tenant stops working within one poll interval."""

    def __init__(self, store: TenantStore, poll_interval: float = 0.5, failures: FailureLimiter | None = None) -> None:
        self._store = store
        self.failures = failures if failures is not None else FailureLimiter()
        self._cache: dict[str, tuple[ApiKeyInfo, Tenant]] = {}
        self._unknown: set[str] = set()
        self._revision = -1
        # The first poll comes one interval after start(), which reads the revision itself.
        self._poller = Periodic("fleetgate-key-cache", self._poll, poll_interval, wait_first=True)
        # Called after each tenancy change (the adapter catalog reloads itself here).
        self.listeners: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        """Read the current revision and start polling for changes."""
        self._revision = await self._store.revision()
        self._poller.start()

    async def stop(self) -> None:
        """Stop polling."""
        await self._poller.stop()

    def invalidate(self) -> None:
        """Forget every cached key (called on any tenancy change)."""
        self._cache.clear()
        self._unknown.clear()

    async def _poll(self) -> None:
        try:
            revision = await self._store.revision()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("tenant store unreachable, keeping cached keys: %s", type(exc).__name__)
            return
        if revision == self._revision:
            return
        self._revision = revision
        self.invalidate()
        for listener in self.listeners:
            try:
                await listener()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("tenancy change listener failed, retrying next change: %s", exc)
                self._revision = -1  # so the next poll runs the listeners again

    async def authenticate(self, authorization: bytes | None, *, client: str | None = None) -> Principal:
        """The principal for a header sent from `client` (the peer's address), or 401/403, or 429 when that address
        failed too often; messages never echo the key."""
        try:  # free when nothing is raised; every 401 below counts against the address
            digest = hash_key(bearer_token(authorization))
            entry = self._cache.get(digest)
            if entry is None:
                self.failures.check(client)  # before the negative cache and the store: a blocked address costs nothing
                if digest in self._unknown:
                    raise AuthenticationFailed("invalid API key: check the key you were given")
                entry = await self._load(digest)
            key, tenant = entry
            # The dict lookup found the entry by hash; compare again in constant time so no path depends on a prefix.
            if not hmac.compare_digest(key.key_hash, digest):
                raise AuthenticationFailed("invalid API key: check the key you were given")
            now = datetime.now(UTC)
            if key.revoked_at is not None and key.revoked_at <= now:
                raise AuthenticationFailed(f"API key {key.prefix}… was revoked")
            if key.expires_at is not None and key.expires_at <= now:
                raise AuthenticationFailed(f"API key {key.prefix}… expired at {key.expires_at.isoformat()}")
            if tenant.status == "deleted":
                raise AuthenticationFailed(f"API key {key.prefix}… belongs to a deleted tenant")
        except AuthenticationFailed:
            self.failures.failed(client)
            raise
        if tenant.status == "suspended":
            raise PermissionDenied(f"tenant {tenant.external_id!r} is suspended; contact the operator")
        return Principal(key, tenant)

    async def _load(self, digest: str) -> tuple[ApiKeyInfo, Tenant]:
        try:
            found = await self._store.lookup(digest)
        except (SQLAlchemyError, OSError) as exc:
            raise UpstreamUnavailable(
                f"cannot check API keys right now (tenant store: {type(exc).__name__}); retry shortly", retry_after=1
            ) from None
        if found is None:
            if len(self._unknown) >= _MAX_NEGATIVE:
                self._unknown.clear()
            self._unknown.add(digest)
            raise AuthenticationFailed("invalid API key: check the key you were given")
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = found
        return found
