"""The operator's probes: `/healthz` (the process answers), `/readyz` (it can serve) and `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from fleetgate.api.app import GET
from fleetgate.api.auth import admin_or_metrics_token
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.observability.readiness import Readiness


def health_router(readiness: Readiness, metrics: GatewayMetrics) -> APIRouter:
    """The three probes; /metrics names tenants, so it needs the metrics token or the admin key."""
    router = APIRouter()

    @router.api_route("/healthz", methods=GET)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.api_route("/readyz", methods=GET)
    async def readyz() -> JSONResponse:
        # Each dependency's state; 503 only when no request could be served (observability/readiness.py).
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.api_route("/metrics", methods=GET, dependencies=[Depends(admin_or_metrics_token)])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
