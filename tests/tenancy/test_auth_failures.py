"""Failed authentications cost little: per-address failure buckets, cached negatives, constant-time secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetgate.domain.errors import AuthenticationFailed, RateLimited
from fleetgate.tenancy.auth import TenantAuthenticator
from fleetgate.tenancy.failures import FailureLimiter, address_key
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.secret_check import SecretCheck
from fleetgate.tenancy.store import TenantStore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(TenantStore):
    """The real SQLite store, counting the key lookups that reach it."""

    lookups = 0

    async def lookup(self, key_hash: str) -> Any:
        self.lookups += 1
        return await super().lookup(key_hash)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[CountingStore]:
    opened = await TenantStore.open(sqlite_url)
    counting = CountingStore(opened.engine)
    await counting.upsert_tenant(TenantSpec(external_id="acme"))
    yield counting
    await opened.close()


def _bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def test_a_bucket_allows_the_burst_then_one_failure_per_interval() -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=3, rate=0.5, clock=clock)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failed("10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        limiter.check("10.0.0.1")
    assert refused.value.status == 429 and refused.value.retry_after == pytest.approx(2.0)
    assert refused.value.reason == "auth_failures" and "failed authentication" in refused.value.message
    limiter.check("10.0.0.2")  # another address has its own bucket
    clock.now += 2.0  # one token back at 0.5/s
    limiter.check("10.0.0.1")
    limiter.failed("10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("10.0.0.1")
    assert limiter.refused == 2


def test_unknown_peers_are_not_limited_and_ipv6_shares_its_64() -> None:
    limiter = FailureLimiter(burst=1, rate=1.0, clock=Clock())
    for _ in range(5):
        limiter.failed(None)
        limiter.check(None)
    assert len(limiter) == 0
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::5") != address_key("2001:db8:1:2::5")
    assert address_key("192.0.2.7") == "192.0.2.7"
    limiter.failed("2001:db8:1:2::5")
    with pytest.raises(RateLimited):
        limiter.check("2001:db8:1:2::99")  # same /64: same host for the limiter


def test_memory_is_bounded_by_forgetting_the_least_recent_addresses() -> None:
    limiter = FailureLimiter(burst=1, rate=0.001, max_addresses=100, clock=Clock())
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    with pytest.raises(RateLimited):
        limiter.check("10.0.3.231")  # the most recent are kept
    limiter.check("10.0.0.0")  # the oldest were forgotten


async def test_random_keys_from_one_address_stop_reaching_the_store(store: CountingStore) -> None:
    auth = TenantAuthenticator(store, failures=FailureLimiter(burst=20, rate=1.0, clock=Clock()))
    for i in range(20):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(_bearer(f"fg-random-{i:04d}-abcdefghijklmnop"), client="203.0.113.9")
    assert store.lookups == 20
    for i in range(200):
        with pytest.raises(RateLimited) as refused:
            await auth.authenticate(_bearer(f"fg-more-{i:04d}-abcdefghijklmnop"), client="203.0.113.9")
    assert store.lookups == 20  # 200 more distinct keys: not one query
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    # Another address is untouched by the first one's failures.
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(_bearer("fg-other-0000-abcdefghijklmnop"), client="203.0.113.10")
    assert store.lookups == 21


async def test_unknown_keys_are_cached_and_a_cached_valid_key_passes_a_blocked_address(store: CountingStore) -> None:
    key, _ = await store.create_key("acme")
    auth = TenantAuthenticator(store, failures=FailureLimiter(burst=3, rate=0.001, clock=Clock()))
    assert (await auth.authenticate(_bearer(key), client="198.51.100.1")).tenant.external_id == "acme"
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(_bearer("fg-same-unknown-key-0123456789"), client="198.51.100.2")
    assert store.lookups == 2  # the unknown key was looked up once, then answered from the negative cache
    with pytest.raises(RateLimited):
        await auth.authenticate(_bearer("fg-same-unknown-key-0123456789"), client="198.51.100.2")
    # A tenant behind the same address (NAT) keeps working while its key is cached...
    assert (await auth.authenticate(_bearer(key), client="198.51.100.2")).tenant.external_id == "acme"
    # ...and a valid key not yet cached waits like everyone else there, without a query.
    other, _ = await store.create_key("acme")
    with pytest.raises(RateLimited):
        await auth.authenticate(_bearer(other), client="198.51.100.2")
    assert store.lookups == 2


async def test_missing_and_malformed_headers_count_as_failures(store: CountingStore) -> None:
    auth = TenantAuthenticator(store, failures=FailureLimiter(burst=2, rate=0.001, clock=Clock()))
    for header in (None, b"Basic abc"):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(header, client="192.0.2.1")
    with pytest.raises(RateLimited):
        await auth.authenticate(_bearer("fg-anything-0123456789abcdef"), client="192.0.2.1")
    assert store.lookups == 0


async def test_secret_check_accepts_any_listed_secret_and_limits_failures() -> None:
    limiter = FailureLimiter(burst=4, rate=0.001, clock=Clock())
    check = SecretCheck(["admin-secret-0001", None, "metrics-token-0002"], failures=limiter)
    await check(b"Bearer admin-secret-0001", client="192.0.2.5")
    await check("bearer  metrics-token-0002 ", client="192.0.2.5")
    for bad in (None, b"admin-secret-0001", b"Basic admin-secret-0001", b"Bearer admin-secret-000", b"Bearer "):
        with pytest.raises((AuthenticationFailed, RateLimited)):
            await check(bad, client="192.0.2.5")
    with pytest.raises(RateLimited):  # 4 failures spent the burst: a wrong secret from there gets 429 now
        await check(b"Bearer wrong-secret-0001", client="192.0.2.5")
    # The right secret still passes from that address: comparing costs nothing, and a prober behind the same NAT
    # must not lock the operator out.
    await check(b"Bearer admin-secret-0001", client="192.0.2.5")
    await check(b"Bearer admin-secret-0001", client="192.0.2.6")
    disabled = SecretCheck([None, "auto"], disabled="the admin API is disabled")  # `auto` unresolved opens nothing
    assert not disabled.enabled
    with pytest.raises(AuthenticationFailed, match="disabled"):
        await disabled(b"Bearer anything")
