"""The gateways bench/overhead.py measures (and bench/profile_gateway.py samples): their modes, and the demo
tenant's limits, set through the admin API and shown to be enforced before any load."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.checkout import Checkout
from harness.gateway import Gateway, put_tenant, start_gateway
from harness.keys import DEMO_KEY
from harness.loadgen import CHAT_PATH, NON_STREAM_BODY
from harness.rest import call

DEMO_TENANT = "demo"
GATEWAY_MODES = ("fleetgate", "fleetgate-redis")
BASE_MODE = "fleetgate-base"  # the same gateway from another checkout (--base-src), for before/after in one run
TARGET_ORDER = ("direct", "floor", "fleetgate", BASE_MODE, "fleetgate-redis", "litellm")
ROLE_OF = {
    "direct": "engine",
    "floor": "floor",
    "fleetgate": "gateway",
    BASE_MODE: "gateway-base",
    "fleetgate-redis": "gateway-redis",
    "litellm": "litellm",
}
# What each gateway mode changes from the defaults. fail_closed: a Redis problem shows up as errors in the table
# instead of the gateway quietly deciding in-process (fail_open, the default) while the row says "Redis".
MODE_ENV: dict[str, dict[str, str]] = {
    "fleetgate": {},
    BASE_MODE: {},
    "fleetgate-redis": {"FLEETGATE_LIMITS__BACKEND": "redis", "FLEETGATE_LIMITS__ON_REDIS_ERROR": "fail_closed"},
}
# A price for the fake engine's model, so every request also moves the tenant's budget counter.
PRICE_ENV = {"FLEETGATE_PRICES__MODELS__FAKE__INPUT": "0.10", "FLEETGATE_PRICES__MODELS__FAKE__OUTPUT": "0.20"}
# High enough never to refuse at any rate this benchmark reaches (a bucket holds a minute of traffic, full at the
# start), yet every limit is checked and counted on every request.
DEMO_LIMITS: dict[str, Any] = {"rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrency": 100_000, "budget": 1e9}
KEY_CACHE_POLL = 0.5  # tenancy.poll_interval: how soon a gateway sees an admin change


def start_mode(
    workdir: Path, upstream_port: int, mode: str, redis_url: str, checkout: Checkout | None = None
) -> Gateway:
    """`fleetgate up` in `mode` in front of the fake engine (from `checkout` for BASE_MODE)."""
    settings = {**PRICE_ENV, **MODE_ENV[mode]}
    if mode == "fleetgate-redis":
        settings["FLEETGATE_LIMITS__REDIS_URL"] = redis_url
    engine = f"http://127.0.0.1:{upstream_port}"
    return start_gateway(workdir, mode, [engine], settings, checkout=checkout if mode == BASE_MODE else None)


def put_demo_limits(gateway_url: str, limits: dict[str, Any]) -> dict[str, Any]:
    """`PUT /admin/tenants/demo` with these limits and `models: ["*"]`; return the tenant as the API shows it."""
    tenant = put_tenant(gateway_url, DEMO_TENANT, {"name": "Demo tenant", "models": ["*"], **limits})
    wrong = {k: (v, tenant.get(k)) for k, v in limits.items() if tenant.get(k) != v}
    if wrong or tenant.get("models") != ["*"]:
        raise RuntimeError(f"the demo tenant did not take the limits (wanted, got): {wrong}, models {tenant['models']}")
    return tenant


def _until(gateway_url: str, want: int, timeout: float) -> int:
    """Send requests until one answers HTTP `want`; return how many it took, or raise RuntimeError."""
    deadline = time.monotonic() + timeout
    sent = 0
    body = json.loads(NON_STREAM_BODY)
    while time.monotonic() < deadline:
        sent += 1
        status, _ = call("POST", gateway_url + CHAT_PATH, body, key=DEMO_KEY, timeout=10)
        if status == want:
            return sent
        if status not in (200, 429):
            raise RuntimeError(f"a chat request answered HTTP {status} while checking the demo tenant's limits")
        time.sleep(0.05)
    raise RuntimeError(f"no HTTP {want} within {timeout:.0f}s while checking the demo tenant's limits")


def configure_limits(gateway_url: str) -> tuple[str, str]:
    """Show the gateway enforces the demo tenant's limits (rpm 1 must answer 429), then set the benchmark's high
    limits and wait until requests pass again; return (the tenant id, what was shown)."""
    put_demo_limits(gateway_url, {**DEMO_LIMITS, "rpm": 1})
    refused_after = _until(gateway_url, 429, timeout=20 * KEY_CACHE_POLL)
    tenant = put_demo_limits(gateway_url, DEMO_LIMITS)
    _until(gateway_url, 200, timeout=20 * KEY_CACHE_POLL)
    # The key cache now holds the new limits (a 200 needs rpm > 1); one more poll interval for good measure.
    time.sleep(2 * KEY_CACHE_POLL)
    shown = f"with rpm 1 request {refused_after} got HTTP 429; then {limits_text(DEMO_LIMITS)} let requests through"
    return str(tenant["id"]), shown


def limits_text(limits: dict[str, Any]) -> str:
    """`rpm ..., tpm ..., max_concurrency ..., budget .../month`."""
    return (
        f"rpm {limits['rpm']:,}, tpm {limits['tpm']:,}, max_concurrency {limits['max_concurrency']:,}, "
        f"budget {limits['budget']:,.0f}/month"
    )
