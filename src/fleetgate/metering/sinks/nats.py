"""NATS JetStream sink: one message per usage event, de-duplicated server-side by `Nats-Msg-Id = event_id`."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import Header, StreamConfig

from fleetgate.config import NatsSinkConfig
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.sinks import SinkError

log = logging.getLogger(__name__)

# Everything nats-py raises on purpose (its TimeoutError also subclasses TimeoutError) plus socket errors.
_FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)


class NatsSink:
    """Publishes usage events to a JetStream stream (created if missing) and waits for every ack."""

    name = "nats"

    def __init__(
        self,
        config: NatsSinkConfig,
        *,
        connect_timeout: float = 1.0,
        ack_timeout: float = 2.0,
        max_in_flight: int = 256,
    ) -> None:
        if connect_timeout <= 0 or ack_timeout <= 0 or max_in_flight < 1:
            raise ValueError("connect_timeout and ack_timeout must be > 0, max_in_flight >= 1")
        self.config = config
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.max_in_flight = max_in_flight
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    async def publish(self, events: list[UsageEvent]) -> None:
        """Publish a batch and wait for JetStream's acks; raise SinkError if any event was not acked."""
        if not events:
            return
        js = await self._jetstream()
        pending: Iterator[UsageEvent] = iter(events)

        async def worker() -> None:
            # Workers share one iterator, so each event is published by exactly one of them.
            for event in pending:
                await js.publish(
                    self.config.subject,
                    event.to_json(),
                    timeout=self.ack_timeout,
                    # Expected-Stream turns "the subject is bound to some other stream" into an error, not a loss.
                    stream=self.config.stream,
                    headers={Header.MSG_ID: event.event_id},
                )

        try:
            # A TaskGroup cancels the remaining workers on the first failure: the flusher retries the whole batch
            # anyway (acked events are then dropped as duplicates), so waiting out more timeouts only delays it.
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.max_in_flight, len(events))):
                    group.create_task(worker())
        except* _FAILURES as failed:
            first = failed.exceptions[0]
            # A JetStream API error is an answer from the server, so the connection is fine; anything else
            # (timeout, no responders, closed socket) may mean a half-dead connection, so start afresh next time.
            if not isinstance(first, nats.js.errors.APIError):
                await self._drop()
            raise SinkError(
                f"nats: publishing {len(events)} events to {self.config.subject!r} failed: {first!r}"
            ) from first

    async def close(self) -> None:
        """Close the connection; a later publish connects again."""
        await self._drop()

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context of a live connection, connecting (and ensuring the stream) if needed."""
        async with self._lock:
            if self._nc is not None and self._js is not None and self._nc.is_connected:
                return self._js
            await self._drop_locked()
            nc = Client()
            last_error: list[Exception] = []

            async def on_error(exc: Exception) -> None:
                # nats-py's default callback logs every failed attempt at ERROR with a traceback; the SinkError
                # raised below carries the cause instead.
                last_error[:] = [exc]
                log.debug("nats: %r", exc)

            connected = False
            try:
                # One deadline for TCP connect + INFO/CONNECT handshake; nats-py only takes whole seconds.
                async with asyncio.timeout(self.connect_timeout):
                    await nc.connect(
                        servers=[self.config.url],
                        name="fleetgate-usage",
                        connect_timeout=max(1, math.ceil(self.connect_timeout)),
                        # Even with allow_reconnect=False nats-py retries the initial connect, sleeping
                        # reconnect_time_wait in between, until a server exceeds max_reconnect_attempts (0 = never):
                        # these values make a refused connection fail after two immediate attempts.
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0,
                        # No client-side reconnect loop once connected: while it runs, publishes queue up and wait
                        # for acks until they time out. Instead a dropped connection closes and the next publish
                        # reconnects.
                        allow_reconnect=False,
                        error_cb=on_error,
                    )
                js = nc.jetstream(timeout=self.ack_timeout)
                await self._ensure_stream(js)
                connected = True
            except _FAILURES as exc:
                cause = f"{exc!r}" + (f" after {last_error[0]!r}" if last_error and last_error[0] is not exc else "")
                raise SinkError(f"nats: cannot use {self.config.url} (stream {self.config.stream!r}): {cause}") from exc
            finally:
                if not connected:
                    await _close_quietly(nc, self.connect_timeout)
            self._nc, self._js = nc, js
            return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream if it does not exist; an existing stream is used as the operator configured it."""
        try:
            await js.stream_info(self.config.stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(
            name=self.config.stream,
            subjects=[self.config.subject],
            duplicate_window=self.config.duplicate_window,
        )
        try:
            await js.add_stream(config)
            log.info("nats: created stream %s for %s", self.config.stream, self.config.subject)
        except nats.js.errors.BadRequestError:
            # Another gateway may have created it (with other settings) since our lookup; use it if it exists now.
            await js.stream_info(self.config.stream)

    async def _drop(self) -> None:
        """Forget and close the current connection, if any."""
        async with self._lock:
            await self._drop_locked()

    async def _drop_locked(self) -> None:
        """`_drop` for callers already holding the lock."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _close_quietly(nc, self.connect_timeout)


async def _close_quietly(nc: Client, timeout: float) -> None:
    """Close a connection without letting a dead peer block or fail the caller."""
    try:
        async with asyncio.timeout(timeout):
            await nc.close()
    except _FAILURES as exc:
        log.debug("nats: closing the connection failed: %r", exc)
