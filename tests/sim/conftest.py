"""Start `sim-engine` processes on free ports and stop them by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fleetgate.local.launcher import free_port


@dataclass
class SimProcess:
    """One running simulator."""

    proc: subprocess.Popen[bytes]
    base: str
    startup_s: float = 0.0

    @property
    def v1(self) -> str:
        """The OpenAI base URL."""
        return self.base + "/v1"

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path; (status, body) also for error statuses."""
        return http("GET", self.base + path)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """POST JSON to a path; (status, body) also for error statuses."""
        return http("POST", self.base + path, body)

    def state(self) -> dict[str, Any]:
        """GET /sim/state."""
        data: dict[str, Any] = json.loads(self.get("/sim/state")[1])
        return data


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """A small blocking HTTP call (the simulator is another process, so blocking is fine here)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


StartSim = Callable[..., SimProcess]


def _wait_listening(base: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"sim-engine exited with {proc.returncode}")
        try:
            http("GET", base + "/health", timeout=0.5)
            return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.02)
    raise RuntimeError("sim-engine did not listen in time")


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Factory: start a simulator with extra CLI args; waits until /health is 200 unless told not to."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, wait_loaded: bool = True) -> SimProcess:
        port = free_port()
        cmd = [sys.executable, "-m", "fleetgate.cli.sim", "--port", str(port), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        started.append(proc)
        sim = SimProcess(proc, f"http://127.0.0.1:{port}")
        sim.startup_s = _wait_listening(sim.base, proc)
        while wait_loaded and sim.get("/health")[0] != 200:
            time.sleep(0.02)
        return sim

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()  # by PID: only what this fixture started
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


FAST = ("--profile", "h100-llama3-8b", "--cold-load-s", "0")
