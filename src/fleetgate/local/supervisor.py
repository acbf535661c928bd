"""Starts, watches, restarts and stops local engine replicas (llama-server or vLLM), one launcher each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from fleetgate.config import LocalFleetConfig
from fleetgate.domain.errors import FleetError
from fleetgate.domain.parent_death import die_with_parent
from fleetgate.fleet.replicas import Replica
from fleetgate.local.launcher import ReplicaLauncher, free_port

log = logging.getLogger(__name__)


@dataclass
class LocalReplica:
    """One supervised engine process."""

    replica: Replica
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    watch_task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Keeps a launcher's N replicas running on free 127.0.0.1 ports."""

    def __init__(
        self,
        cfg: LocalFleetConfig,
        launcher: ReplicaLauncher,
        log_dir: Path,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.launcher = launcher
        self.log_dir = log_dir
        self.on_change = on_change or (lambda: None)
        self.replicas: list[LocalReplica] = []
        self._stopping = False

    def _spawn(self, local: LocalReplica, index: int) -> None:
        spec = self.launcher.spec(local.port, index)
        local.log_path.parent.mkdir(parents=True, exist_ok=True)
        with local.log_path.open("ab") as out:
            local.proc = subprocess.Popen(
                spec.argv,
                env={**os.environ, **spec.env} if spec.env else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which drains, then stops replicas
                preexec_fn=die_with_parent,  # if the supervisor is SIGKILLed, the kernel stops the replica too
                close_fds=True,
            )
        local.started_at = time.monotonic()
        local.replica.local_pid = local.proc.pid
        local.replica.mark(False, "starting")
        self.on_change()

    async def start(self) -> list[Replica]:
        """Start every replica and wait until each answers /health; raise FleetError with the log tail if not."""
        launcher = self.launcher
        for index in range(launcher.count):
            port = free_port()
            rid = f"{launcher.id_prefix}-{index}"
            replica = Replica(
                id=rid,
                url=f"http://127.0.0.1:{port}",
                kind=launcher.kind,
                models={launcher.model_alias},
                gpu_type=self.cfg.gpu_type,
            )
            local = LocalReplica(replica=replica, port=port, log_path=self.log_dir / f"{rid}.log")
            self.replicas.append(local)
            self._spawn(local, index)
        try:
            await asyncio.gather(*(self._wait_ready(r, launcher.start_timeout) for r in self.replicas))
        except FleetError:
            await self.stop()
            raise
        for local in self.replicas:
            local.watch_task = asyncio.create_task(self._watch(local), name=f"supervise-{local.replica.id}")
        return [r.replica for r in self.replicas]

    async def _wait_ready(self, local: LocalReplica, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = local.replica.url + "/health"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert local.proc is not None
                if local.proc.poll() is not None:
                    raise FleetError(
                        f"replica {local.replica.id} exited with code {local.proc.returncode} while starting;"
                        f" last lines of {local.log_path}:\n{_tail(local.log_path)}"
                    )
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            local.replica.mark(True)
                            self.on_change()
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        raise FleetError(
            f"replica {local.replica.id} did not answer /health within {timeout:.0f}s;"
            f" last lines of {local.log_path}:\n{_tail(local.log_path)}"
        )

    async def _watch(self, local: LocalReplica) -> None:
        backoff = 0.5
        while not self._stopping:
            assert local.proc is not None
            if local.proc.poll() is None:
                await asyncio.sleep(0.25)
                continue
            code = local.proc.returncode
            local.replica.mark(False, f"exited with code {code}")
            self.on_change()
            if self._stopping:
                return
            # A replica that ran a while before dying gets a quick restart; a crash loop backs off.
            if time.monotonic() - local.started_at > 60:
                backoff = 0.5
            log.warning("replica %s exited with code %s; restarting in %.1fs", local.replica.id, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.restart_backoff_max)
            if self._stopping:
                return
            local.restarts += 1
            self._spawn(local, self.replicas.index(local))
            try:
                await self._wait_ready(local, self.launcher.start_timeout)
            except FleetError as exc:
                log.error("%s", exc)
                self._terminate(local)

    def _terminate(self, local: LocalReplica, sig: int = signal.SIGTERM) -> None:
        if local.proc is not None and local.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(local.proc.pid, sig)  # its own group (start_new_session): the PID is the group id

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every replica: SIGTERM, wait, then SIGKILL; reap them all."""
        self._stopping = True
        for local in self.replicas:
            if local.watch_task is not None:
                local.watch_task.cancel()
            self._terminate(local)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(r.proc is not None and r.proc.poll() is None for r in self.replicas):
            await asyncio.sleep(0.1)
        for local in self.replicas:
            self._terminate(local, signal.SIGKILL)
            if local.proc is not None:
                try:
                    local.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log.error("replica %s (pid %s) did not exit after SIGKILL", local.replica.id, local.proc.pid)
            local.replica.mark(False, "stopped")
        self.on_change()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
