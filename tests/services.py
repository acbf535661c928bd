"""Real local services for tests (PostgreSQL, Redis, NATS): fail when CI requires them, skip otherwise."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest

POSTGRES_ADMIN_URL = os.environ.get("FLEETGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FLEETGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def missing(service: str, detail: str) -> NoReturn:
    """A required service is down: fail under FLEETGATE_REQUIRE_SERVICES=1 (CI), skip with the reason otherwise."""
    message = f"{service} is not reachable ({detail})"
    if os.environ.get("FLEETGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " and FLEETGATE_REQUIRE_SERVICES=1")
    pytest.skip(message)
