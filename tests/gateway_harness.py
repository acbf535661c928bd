"""Run a real gateway (uvicorn + the app) inside the test's event loop, on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from fleetgate.config import Config, EngineEndpoint
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.gateway.app import build_app
from fleetgate.gateway.build import build_gateway, remote_replicas
from fleetgate.gateway.parts import Gateway
from fleetgate.http.server import GatewayServer, bind_socket, uvicorn_config
from fleetgate.iolog.log import IOLog
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.ledger import SqlLedger
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.serving.handler import CompletionHandler
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.store import TenantStore
from tests.fakes import FakeEngine
from tests.keys import ADMIN_KEY, DEMO_KEY


@dataclass(frozen=True)
class Handles:
    """The parts tests reach into, by flat names (`gw.gateway.store`); `parts` is the gateway as fleetgate groups it."""

    parts: Gateway
    config: Config
    registry: ReplicaRegistry
    store: TenantStore
    gate: TenantGate
    ledger: SqlLedger
    capture: UsageCapture
    flusher: Flusher
    iolog: IOLog
    completions: CompletionHandler
    admission: AdmissionController | None
    metrics: GatewayMetrics

    @classmethod
    def of(cls, g: Gateway) -> Handles:
        """Handles on a built gateway."""
        m = g.metering
        return cls(
            g,
            g.config,
            g.fleet.registry,
            g.tenancy.store,
            g.tenancy.gate,
            m.ledger,
            m.capture,
            m.flusher,
            m.iolog,
            g.serving.completions,
            g.serving.admission,
            g.serving.metrics,
        )


@dataclass
class RunningGateway:
    """A gateway under test."""

    url: str
    gateway: Handles
    server: uvicorn.Server

    @property
    def headers(self) -> dict[str, str]:
        """Auth headers with the demo key."""
        return {"Authorization": f"Bearer {DEMO_KEY}"}

    @property
    def admin_headers(self) -> dict[str, str]:
        """Auth headers with the admin key."""
        return {"Authorization": f"Bearer {ADMIN_KEY}"}


@asynccontextmanager
async def running_gateway(
    engine_urls: list[str],
    *,
    sections: dict[str, Any] | None = None,
    metering: dict[str, Any] | None = None,
    **gateway_overrides: object,
) -> AsyncIterator[RunningGateway]:
    """Start a gateway in front of the given engines (fresh SQLite database unless `sections` names one)."""
    db_dir = tempfile.mkdtemp(prefix="fg-gw-")
    config = Config.model_validate(
        {
            "gateway": {
                "port": 0,
                "health_interval": 0.2,
                "demo_api_key": DEMO_KEY,
                "admin_api_key": ADMIN_KEY,
                "expose_route_headers": True,  # the tests read which replica served
                **gateway_overrides,
            },
            "local": {"replicas": 0},
            "engines": [EngineEndpoint(url=u, id=f"engine-{i}").model_dump() for i, u in enumerate(engine_urls)],
            "database": {"url": f"sqlite:///{db_dir}/fleetgate.db"},
            "tenancy": {"poll_interval": 0.1},
            "routing": {"policy": "round_robin"},  # deterministic spread; routing tests choose their policy
            "metering": {
                "outbox_dir": f"{db_dir}/outbox",
                "flush_interval": 0.05,
                "fsync_interval": 0,
                **(metering or {}),
            },
            **(sections or {}),
        }
    )
    gateway = build_gateway(config, ReplicaRegistry(remote_replicas(config.engines)))
    sock = bind_socket("127.0.0.1", 0)
    server = GatewayServer(
        uvicorn_config(build_app(gateway), shutdown_grace=config.gateway.shutdown_grace, limits=config.gateway)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    try:
        await _until_serving(server, task)
        yield RunningGateway(f"http://127.0.0.1:{port}", Handles.of(gateway), server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
        shutil.rmtree(db_dir, ignore_errors=True)


async def _until_serving(server: GatewayServer, task: asyncio.Task[None], bound: float = 60.0) -> None:
    """Wait until uvicorn says it serves (it has no event for it); fail naming why, within `bound` seconds."""
    deadline = asyncio.get_running_loop().time() + bound
    while not server.started:
        if task.done():
            task.result()  # raises what stopped the server
            raise RuntimeError("the gateway stopped before it served")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the gateway did not start serving within {bound:.0f} s")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def gateway_with_fake_engine(**options: Any) -> AsyncIterator[RunningGateway]:
    """A gateway (running_gateway's `options`) in front of one fake engine serving `smollm2`."""
    engine = FakeEngine(model="smollm2")
    await engine.start()
    try:
        async with running_gateway([engine.url], **options) as running:
            yield running
    finally:
        await engine.stop()
