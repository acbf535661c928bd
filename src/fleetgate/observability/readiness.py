"""What `/readyz` reports: each dependency's state, and whether this gateway can serve at all.

Unready (503) only when no request could be served: no healthy replica, the tenant store down while no key is
cached, the outbox refusing new requests, or Redis down under `fail_closed`. A down ledger database or sink is
degraded (200): events wait in the outbox. Probes that touch the network (tenant store, ledger, Redis) run one at
a time per dependency and are never cancelled (a cancelled database call can leave its connection unusable): a
probe still running after `wait` seconds reports the dependency as not answering, and the next call reuses it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.outbox import Outbox
from fleetgate.tenancy.limits.base import Limiter
from fleetgate.tenancy.limits.failover import FailoverLimiter
from fleetgate.tenancy.store import TenantStore

PROBE_WAIT = 2.0  # seconds /readyz waits for a probe before saying the dependency does not answer
PROBE_TTL = 1.0  # seconds a probe's answer is reused


@dataclass
class Check:
    """One dependency: ok or why not; `blocking` failures make the gateway unready, others degraded."""

    ok: bool
    detail: str
    blocking: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The check as /readyz shows it."""
        return {"ok": self.ok, "detail": self.detail, **self.extra}


class Probe:
    """A single-flight, briefly cached, bounded-wait call to a dependency (None: it answered, else the error)."""

    def __init__(self, call: Callable[[], Awaitable[object]], wait: float = PROBE_WAIT, ttl: float = PROBE_TTL) -> None:
        self._call = call
        self._wait = wait
        self._ttl = ttl
        self._task: asyncio.Task[str | None] | None = None
        self._result: tuple[float, str | None] | None = None

    async def run(self) -> str | None:
        """None when the dependency answered, else what went wrong."""
        now = time.monotonic()
        if self._result is not None and now - self._result[0] < self._ttl:
            return self._result[1]
        task = self._task
        if task is None:
            task = self._task = asyncio.create_task(self._probe())
        done, _ = await asyncio.wait({task}, timeout=self._wait)
        if not done:
            return f"no answer within {self._wait:g} s"
        if self._task is task:
            self._task = None
            self._result = (time.monotonic(), task.result())
        return task.result()

    async def _probe(self) -> str | None:
        try:
            await self._call()
        except Exception as exc:  # any failure is the answer here; it names the dependency's error
            return f"{type(exc).__name__}: {exc}".rstrip(": ")[:300]
        return None


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


class TenantStoreCheck:
    """The tenant store: down is blocking only when no cached key can still authenticate."""

    def __init__(self, store: TenantStore, cached_keys: Callable[[], int]) -> None:
        self._probe = Probe(store.revision)
        self._cached_keys = cached_keys

    async def run(self) -> tuple[Check, str | None]:
        """The check, and the probe's error (the ledger shares it when it lives in the same database)."""
        error = await self._probe.run()
        cached = self._cached_keys()
        if error is None:
            return Check(True, "answering", extra={"cached_keys": cached}), None
        if cached:
            detail = f"unreachable ({error}); {cached} cached keys keep working, new keys get 503"
        else:
            detail = f"unreachable ({error}) and no key is cached: every request gets 503"
        return Check(False, detail, blocking=cached == 0, extra={"cached_keys": cached}), error


class RedisCheck:
    """The shared limiter's Redis behind its failover: blocking only under `fail_closed`."""

    def __init__(self, limiter: FailoverLimiter) -> None:
        self._limiter = limiter
        ping = getattr(limiter.primary, "ping", None)
        self._probe = Probe(ping) if ping is not None else None

    async def run(self) -> Check:
        """The check, with the failover's counters."""
        limiter = self._limiter
        error = await self._probe.run() if self._probe is not None else None
        counts = {
            "outages": limiter.outages,
            "fallback_decisions": limiter.fallback_decisions,
            "settle_failures": limiter.settle_failures,
            "settles_pending": len(limiter.backlog),
            "settles_dropped": limiter.backlog.dropped,
        }
        if error is None and not limiter.degraded:
            return Check(True, "answering", extra=counts)
        why = error or "the last limit decision could not reach it"
        if limiter.policy == "fail_closed":
            detail = f"unreachable ({why}); limits.on_redis_error=fail_closed: requests get 503"
            return Check(False, detail, blocking=True, extra=counts)
        return Check(False, f"unreachable ({why}); limits are decided per gateway process (fail_open)", extra=counts)


class Readiness:
    """Collects the checks; built once per gateway, called by the /readyz route."""

    def __init__(
        self,
        registry: ReplicaRegistry,
        store: TenantStore,
        cached_keys: Callable[[], int],
        ledger_engine: AsyncEngine,
        flusher: Flusher,
        outbox: Outbox,
        limiter: Limiter,
    ) -> None:
        self._registry = registry
        self._flusher = flusher
        self._outbox = outbox
        self._tenant_store = TenantStoreCheck(store, cached_keys)
        separate = ledger_engine is not store.engine
        self._ledger_probe = Probe(lambda: _select_one(ledger_engine)) if separate else None
        self._redis = RedisCheck(limiter) if isinstance(limiter, FailoverLimiter) else None

    async def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the JSON body)."""
        checks: dict[str, Check] = {"engines": self._engines()}
        checks["tenant_store"], store_error = await self._tenant_store.run()
        checks["ledger"] = await self._ledger(store_error)
        checks.update(self._sinks())
        if self._redis is not None:
            checks["redis"] = await self._redis.run()
        checks["outbox"] = self._outbox_check()
        ready = not any(c.blocking and not c.ok for c in checks.values())
        status = "ready" if all(c.ok for c in checks.values()) else "degraded" if ready else "unready"
        body = {
            "status": status,
            "healthy_replicas": checks["engines"].extra["healthy_replicas"],
            "checks": {name: check.to_json() for name, check in checks.items()},
        }
        return ready, body

    def _engines(self) -> Check:
        replicas = self._registry.all()
        healthy = [r.id for r in replicas if r.healthy]
        down = {r.id: r.last_error or "not checked yet" for r in replicas if not r.healthy}
        detail = f"{len(healthy)} of {len(replicas)} replicas healthy"
        return Check(bool(healthy), detail, blocking=True, extra={"healthy_replicas": healthy, "unhealthy": down})

    async def _ledger(self, store_error: str | None) -> Check:
        failing = self._failing("ledger")
        error = await self._ledger_probe.run() if self._ledger_probe is not None else store_error
        if error is None and failing is None:
            return Check(True, "answering")
        why = error or f"deliveries failing for {failing:.0f} s"
        return Check(False, f"unreachable ({why}); usage events wait in the outbox")

    def _sinks(self) -> dict[str, Check]:
        checks: dict[str, Check] = {}
        for name, failing_for, _ in self._flusher.consumer_state():
            if name == "ledger":
                continue
            if failing_for > 0:
                checks[name] = Check(False, f"failing for {failing_for:.0f} s; usage events wait in the outbox")
            else:
                checks[name] = Check(True, "delivering")
        return checks

    def _failing(self, consumer: str) -> float | None:
        for name, failing_for, _ in self._flusher.consumer_state():
            if name == consumer and failing_for > 0:
                return failing_for
        return None

    def _outbox_check(self) -> Check:
        # `accepting`/`refusal_reason` come with the outbox's disk checks; an outbox without them always accepts.
        accepting = bool(getattr(self._outbox, "accepting", True))
        reason = getattr(self._outbox, "refusal_reason", None)
        if accepting:
            return Check(True, "accepting")
        return Check(False, f"refusing new requests ({reason or 'unknown reason'})", blocking=True)
