"""`fleetgate up` in front of engines, as every benchmark starts it, and the admin calls benchmarks make.

Each gateway runs from defaults plus the settings a benchmark gives it: no FLEETGATE_* overrides from this shell,
no fleetgate.yaml (its working directory is its own), the test keys (`keys.KEY_ENV`), and a fresh state dir, so
its SQLite database and its outbox start empty. With a `Checkout` it runs that checkout's code instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checkout import Checkout
from harness.keys import ADMIN_KEY, EXPOSE_ROUTE_HEADERS, KEY_ENV
from harness.procs import Child, StartError, free_port, start_ready
from harness.rest import call


@dataclass
class Gateway:
    """A running gateway: its process, port and home (state and run dirs)."""

    child: Child
    port: int
    home: Path

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The gateway's process id (the root of its process tree)."""
        return self.child.pid


def gateway_env(home: Path, settings: Mapping[str, str], checkout: Checkout | None = None) -> dict[str, str]:
    """The environment of a gateway living in `home` with `settings` over the defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(KEY_ENV)
    env.update(settings)
    env["FLEETGATE_STATE_DIR"] = str(home / "state")
    env["FLEETGATE_RUN_DIR"] = str(home / "run")
    if checkout is not None:
        env = checkout.env(env)
        # Its config refuses settings it predates; before this one it always sent the routing headers.
        if not checkout.knows(EXPOSE_ROUTE_HEADERS.rsplit("__", 1)[1].lower()):
            env.pop(EXPOSE_ROUTE_HEADERS, None)
    return env


def start_gateway(
    workdir: Path,
    name: str,
    engines: Sequence[str],
    settings: Mapping[str, str] | None = None,
    *,
    checkout: Checkout | None = None,
    timeout: float = 60,
    healthy: int = 0,
) -> Gateway:
    """`fleetgate up --engine URL ...` living in `workdir/name`, ready (/readyz) and, with `healthy`, seeing that
    many healthy replicas."""
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [sys.executable, "-m", "fleetgate.cli.main", "up", "--port", str(port), "--no-self-test"]
    args += [a for url in engines for a in ("--engine", url)]
    env = gateway_env(home, settings or {}, checkout)
    url = f"http://127.0.0.1:{port}"
    child = start_ready(name, args, workdir / f"{name}.log", f"{url}/readyz", timeout, env=env, cwd=home)
    gateway = Gateway(child, port, home)
    try:
        if healthy:
            wait_healthy(gateway, healthy)
    except BaseException:
        child.stop()
        raise
    return gateway


def wait_healthy(gateway: Gateway, replicas: int, timeout: float = 30) -> None:
    """Wait until /readyz lists `replicas` healthy replicas (it answers 200 with one)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = call("GET", f"{gateway.url}/readyz")
        if status == 200 and len(json.loads(body).get("healthy_replicas", [])) >= replicas:
            return
        if time.monotonic() > deadline:
            raise StartError(f"{gateway.child.name} did not see {replicas} healthy replicas: {body[:200]!r}")
        time.sleep(0.1)


def _admin(method: str, url: str, body: Any) -> Any:
    status, data = call(method, url, body, key=ADMIN_KEY)
    if status not in (200, 201):
        raise RuntimeError(f"{method} /{url.split('/', 3)[-1]} answered HTTP {status}: {data[:300]!r}")
    return json.loads(data)


def put_tenant(gateway_url: str, tenant: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """`PUT /admin/tenants/<tenant>`; the tenant as the API shows it."""
    tenant_view: dict[str, Any] = _admin("PUT", f"{gateway_url}/admin/tenants/{tenant}", dict(body))
    return tenant_view


def create_key(gateway_url: str, tenant: str, name: str | None = None) -> str:
    """A new API key of `tenant` (`POST /admin/tenants/<tenant>/keys`)."""
    body = {"name": name} if name else {}
    return str(_admin("POST", f"{gateway_url}/admin/tenants/{tenant}/keys", body)["key"])


def put_adapter(gateway_url: str, name: str, body: Mapping[str, Any]) -> None:
    """`PUT /admin/adapters/<name>`: register a LoRA adapter."""
    _admin("PUT", f"{gateway_url}/admin/adapters/{name}", dict(body))


def wait_keys(gateway_url: str, keys: Mapping[str, str], model: str, timeout: float = 15) -> None:
    """Wait until the gateway accepts every key (its key cache polls the store) and lists `model` for it."""
    deadline = time.monotonic() + timeout
    for tenant, key in keys.items():
        while True:
            status, body = call("GET", f"{gateway_url}/v1/models", key=key)
            if status == 200 and model in body.decode():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the key of tenant {tenant} is not accepted: HTTP {status} {body[:200]!r}")
            time.sleep(0.1)
