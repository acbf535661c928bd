"""The keys tests configure explicitly (the shipped defaults are random, generated at first start)."""

from __future__ import annotations

DEMO_KEY = "fg-test-demo-4f9c2a7e1b3d5c6a"
ADMIN_KEY = "fg-test-admin-8d1e6b0c9a2f4e7b"
# For gateways started as processes (`fleetgate up`): the same keys from the environment, and the routing headers
# (off by default: topology is the operator's) that the e2e tests read to see which replica served.
KEY_ENV = {
    "FLEETGATE_GATEWAY__DEMO_API_KEY": DEMO_KEY,
    "FLEETGATE_GATEWAY__ADMIN_API_KEY": ADMIN_KEY,
    "FLEETGATE_GATEWAY__EXPOSE_ROUTE_HEADERS": "true",
}
