"""NatsSink against a real NATS JetStream server (the session's own): de-duplication, round trip, fast failure."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import nats
import nats.js.errors
import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from fleetgate.config import NatsSinkConfig
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.sinks import SinkError
from fleetgate.metering.sinks.nats import NatsSink
from tests.fakes import free_port
from tests.waiting import wait_until

# A sink that cannot reach NATS gives up by its own timeouts: connect (1 s) or ack (2 s), then closing the dead
# connection (1 s). The rest is slack for a loaded 2-core machine; what this guards against is nats-py's own
# reconnect loop, which would wait for minutes.
FAST = 1.0 + 2.0 + 1.0 + 5.0


def _events(n: int, tenant: str = "t-1") -> list[UsageEvent]:
    """n distinct finished requests."""
    now = time.time()
    return [
        UsageEvent(
            event_id=str(uuid.uuid4()),
            tenant_id=tenant,
            key_id="k-1",
            model="smollm2",
            adapter=None,
            replica_id="r-0",
            engine="llamacpp",
            gpu_type="cpu",
            started_at=now,
            first_token_at=now + 0.05,
            ended_at=now + 0.25,
            prompt_tokens=10 + i,
            cached_tokens=i % 3,
            completion_tokens=7,
            status="ok",
            usage_source="engine",
            stream=bool(i % 2),
        )
        for i in range(n)
    ]


@pytest.fixture
async def admin(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream client to inspect and clean up streams."""
    nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
    try:
        yield nc.jetstream(timeout=5)
    finally:
        await nc.close()


@pytest.fixture
async def config(admin: JetStreamContext, nats_url: str) -> AsyncIterator[NatsSinkConfig]:
    """A unique stream and subject for one test; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    cfg = NatsSinkConfig(
        url=nats_url,
        stream=f"FG_TEST_{tag}",
        subject=f"fgtest.{tag}.usage",
        duplicate_window=120.0,
    )
    yield cfg
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await admin.delete_stream(cfg.stream)


@pytest.fixture
async def sink(config: NatsSinkConfig) -> AsyncIterator[NatsSink]:
    """A sink on the test's stream, closed afterwards."""
    s = NatsSink(config)
    yield s
    await s.close()


async def _stored(admin: JetStreamContext, stream: str) -> list[tuple[str, UsageEvent]]:
    """Every message in the stream as (Nats-Msg-Id header, decoded body), in sequence order."""
    info = await admin.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await admin.get_msg(stream, seq)
        assert msg.headers is not None
        assert msg.data is not None
        out.append((msg.headers["Nats-Msg-Id"], UsageEvent.from_dict(orjson.loads(msg.data))))
    return out


def _closed_port_url() -> str:
    """A 127.0.0.1 URL nobody listens on (connections are refused)."""
    return f"nats://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def _silent_server() -> Iterator[str]:
    """A port that completes the TCP handshake (kernel backlog) but never speaks NATS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


def _disconnected(sink: NatsSink) -> bool:
    """The sink holds no live connection (it will reconnect on its next publish)."""
    return sink._nc is None or not sink._nc.is_connected


class _Proxy:
    """A TCP relay on 127.0.0.1 in front of NATS that the test can stop (dropping connections) and start again."""

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.target.hostname, self.target.port)
        self._writers |= {client_w, server_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


async def test_creates_missing_stream_with_subject_and_duplicate_window(
    sink: NatsSink, config: NatsSinkConfig, admin: JetStreamContext
) -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.stream_info(config.stream)
    await sink.publish(_events(3))
    info = await admin.stream_info(config.stream)
    assert info.config.subjects == [config.subject]
    assert info.config.duplicate_window == pytest.approx(config.duplicate_window)
    assert info.state.messages == 3


async def test_replayed_events_are_stored_once(sink: NatsSink, config: NatsSinkConfig, admin: JetStreamContext) -> None:
    events = _events(20)
    await sink.publish(events)
    await sink.publish(events)  # the flusher retrying a batch whose acks it never saw
    restarted = NatsSink(config)  # a new gateway process replaying an orphaned outbox
    try:
        await restarted.publish(events[5:] + events[:5] + events[:3])  # reordered, duplicates inside the batch too
    finally:
        await restarted.close()
    stored = await _stored(admin, config.stream)
    ids = [msg_id for msg_id, _ in stored]
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {e.event_id for e in events}


async def test_body_round_trips_to_usage_event(sink: NatsSink, config: NatsSinkConfig, admin: JetStreamContext) -> None:
    events = _events(8)
    await sink.publish(events)
    stored = await _stored(admin, config.stream)
    by_id = {e.event_id: e for e in events}
    assert len(stored) == len(events)
    for msg_id, body in stored:
        assert body.event_id == msg_id
        assert body == by_id[msg_id]


async def test_existing_stream_is_used_as_configured(config: NatsSinkConfig, admin: JetStreamContext) -> None:
    other = config.subject.replace(".usage", ".other")
    await admin.add_stream(StreamConfig(name=config.stream, subjects=[config.subject, other], duplicate_window=60.0))
    sink = NatsSink(config)
    try:
        await sink.publish(_events(4))
    finally:
        await sink.close()
    info = await admin.stream_info(config.stream)
    assert info.config.subjects == [config.subject, other]
    assert info.config.duplicate_window == pytest.approx(60.0)
    assert info.state.messages == 4


async def test_large_batch_with_bounded_concurrency(config: NatsSinkConfig, admin: JetStreamContext) -> None:
    sink = NatsSink(config, max_in_flight=16)
    events = _events(1500)
    try:
        await sink.publish(events)
    finally:
        await sink.close()
    info = await admin.stream_info(config.stream)
    assert info.state.messages == len(events)


async def test_closed_port_raises_fast() -> None:
    sink = NatsSink(NatsSinkConfig(url=_closed_port_url()))
    try:
        for _ in range(2):  # a failed attempt leaves no state behind that makes the next one hang
            started = time.monotonic()
            with pytest.raises(SinkError):
                await sink.publish(_events(2))
            assert time.monotonic() - started < FAST
    finally:
        await sink.close()


async def test_silent_server_raises_fast() -> None:
    with _silent_server() as url:
        sink = NatsSink(NatsSinkConfig(url=url))
        started = time.monotonic()
        with pytest.raises(SinkError):
            await sink.publish(_events(2))
        elapsed = time.monotonic() - started
        await sink.close()
    assert elapsed < FAST


async def test_empty_batch_does_not_connect() -> None:
    sink = NatsSink(NatsSinkConfig(url=_closed_port_url()))
    await sink.publish([])
    await sink.close()


async def test_close_then_publish_reconnects(sink: NatsSink, config: NatsSinkConfig, admin: JetStreamContext) -> None:
    first, second = _events(3), _events(3)
    await sink.publish(first)
    await sink.close()
    await sink.close()  # closing twice is harmless
    await sink.publish(second)
    assert (await admin.stream_info(config.stream)).state.messages == 6


async def test_recovers_after_outage_and_dropped_connection(config: NatsSinkConfig, admin: JetStreamContext) -> None:
    proxy = _Proxy(config.url)
    sink = NatsSink(config.model_copy(update={"url": proxy.url}))
    early, middle, late = _events(4), _events(4), _events(4)
    try:
        # NATS unreachable at first: fail fast, then the same sink succeeds once it is reachable.
        started = time.monotonic()
        with pytest.raises(SinkError):
            await sink.publish(early)
        assert time.monotonic() - started < FAST
        await proxy.start()
        await sink.publish(early)

        # The live connection is dropped: publishing fails fast while NATS is away, then reconnects by itself.
        await proxy.stop()
        await wait_until(lambda: _disconnected(sink), what="the sink's client to read the EOF")
        started = time.monotonic()
        with pytest.raises(SinkError):
            await sink.publish(middle)
        assert time.monotonic() - started < FAST
        await proxy.start()
        await sink.publish(middle + late)
    finally:
        await sink.close()
        with contextlib.suppress(AssertionError):
            await proxy.stop()
    stored = await _stored(admin, config.stream)
    assert sorted(i for i, _ in stored) == sorted(e.event_id for e in early + middle + late)


async def test_stream_deleted_underneath_is_recreated(
    sink: NatsSink, config: NatsSinkConfig, admin: JetStreamContext
) -> None:
    await sink.publish(_events(2))
    await admin.delete_stream(config.stream)
    with pytest.raises(SinkError):  # no stream answers the subject any more
        await sink.publish(_events(2))
    events = _events(2)
    await sink.publish(events)  # reconnecting ensures the stream again
    stored = await _stored(admin, config.stream)
    assert [i for i, _ in stored] == [e.event_id for e in events]


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        NatsSink(NatsSinkConfig(), max_in_flight=0)


def test_is_a_sink() -> None:
    from fleetgate.metering.events import Sink

    sink: Sink = NatsSink(NatsSinkConfig())
    assert sink.name == "nats"
