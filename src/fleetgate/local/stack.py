"""The local stack `fleetgate up` runs in one process: supervised replicas plus the gateway, stopped together."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fleetgate.config import Config
from fleetgate.domain.errors import FleetError
from fleetgate.domain.paths import ensure_state_dir, private_dir
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.gateway.app import build_app, build_gateway, remote_replicas
from fleetgate.http.server import GatewayServer, bind_socket, uvicorn_config
from fleetgate.local.launcher import ReplicaLauncher
from fleetgate.local.rundir import ProcRecord, RunDir, RunState
from fleetgate.local.supervisor import Supervisor
from fleetgate.tenancy.bootstrap_keys import check_public_bind

log = logging.getLogger(__name__)

ReadyHook = Callable[[RunState], Coroutine[Any, Any, None]]


def check_not_running(run_dir: RunDir) -> None:
    """Refuse to start a second stack over a live one in the same run directory."""
    state = run_dir.read()
    if state is not None and state.supervisor is not None and state.supervisor.alive():
        raise FleetError(
            f"a stack is already running from {run_dir.path} (pid {state.supervisor.pid},"
            f" gateway {state.gateway_url}); stop it with `fleetgate down`"
        )


async def run_stack(
    config: Config,
    run_dir: RunDir,
    *,
    launchers: list[ReplicaLauncher],
    binary: Path | None,
    model: Path | None,
    on_ready: ReadyHook | None = None,
) -> None:
    """Start replicas (one supervisor per launcher) and the gateway, serve until SIGINT/SIGTERM, then stop all."""
    check_not_running(run_dir)
    check_public_bind(config.gateway)
    ensure_state_dir()
    private_dir(run_dir.path, tighten_existing=True)  # PIDs, replica logs: this user's only
    sock = bind_socket(config.gateway.host, config.gateway.port)
    host, port = sock.getsockname()[:2]
    state = RunState(
        supervisor=ProcRecord.of(os.getpid(), "supervisor"),
        engines=[e.url for e in config.engines],
        binary=str(binary) if binary else None,
        model=str(model) if model else None,
        model_alias=config.local.model_alias if launchers else None,
    )
    supervisors: list[Supervisor] = []

    def save() -> None:
        state.replicas = [
            ProcRecord.of(r.proc.pid, "replica", port=r.port, url=r.replica.url, id=r.replica.id)
            for supervisor in supervisors
            for r in supervisor.replicas
            if r.proc is not None
        ]
        run_dir.write(state)

    save()
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_event.set)
    try:
        registry = ReplicaRegistry(remote_replicas(config.engines))
        if launchers:
            supervisors.extend(
                Supervisor(config.local, launcher, run_dir.path / "logs", on_change=save) for launcher in launchers
            )
            starting: asyncio.Future[list[list[Replica]]] = asyncio.gather(*(s.start() for s in supervisors))
            stop_wait = asyncio.create_task(stop_event.wait())
            waiters: set[asyncio.Future[Any]] = {starting, stop_wait}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            for started in starting.result():
                for replica in started:
                    registry.add(replica)
        gateway = build_gateway(config, registry)
        server = GatewayServer(
            uvicorn_config(build_app(gateway), shutdown_grace=config.gateway.shutdown_grace, limits=config.gateway)
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
                raise FleetError("the gateway stopped while starting")
            await asyncio.sleep(0.05)
        # Everything built at start-up (config, models, DB metadata) lives for the whole process: move it out of
        # the collector's sight, and collect the young generation less often (measured: p99 -80% at c=32).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 100)
        state.gateway_url = f"http://{host}:{port}"
        state.status = "ready"
        save()
        if on_ready is not None:
            asyncio.create_task(on_ready(state))  # noqa: RUF006 - a one-off banner; it must not delay serving
        stop_wait = asyncio.create_task(stop_event.wait())
        await asyncio.wait({serving, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        state.status = "stopping"
        save()
        server.should_exit = True  # stop accepting; in-flight streams get the grace period
        await serving
        stop_wait.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.gather(*(supervisor.stop() for supervisor in supervisors))
        sock.close()
        run_dir.clear()
