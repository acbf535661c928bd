"""The keys every benchmark gateway is started with (the shipped defaults are random, generated at first start)."""

from __future__ import annotations

DEMO_KEY = "fg-bench-demo-3e8a1c5f7b9d2e4a"
ADMIN_KEY = "fg-bench-admin-6b2d9f4a1c8e7d3b"
# The routing headers are off by default (topology is the operator's); the routing benchmarks read them.
EXPOSE_ROUTE_HEADERS = "FLEETGATE_GATEWAY__EXPOSE_ROUTE_HEADERS"
KEY_ENV = {
    "FLEETGATE_GATEWAY__DEMO_API_KEY": DEMO_KEY,
    "FLEETGATE_GATEWAY__ADMIN_API_KEY": ADMIN_KEY,
    EXPOSE_ROUTE_HEADERS: "true",
}
