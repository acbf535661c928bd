"""ASGI assembly and lifespan: the pooled client, health checks, and the /v1 routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fleetgate.api import openai
from fleetgate.api.errors import api_error_handler, http_exception_handler
from fleetgate.api.proxy import Proxy
from fleetgate.config import Config, EngineEndpoint
from fleetgate.errors import ApiError
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.health import HealthChecker
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.routing.plugins import make_router
from fleetgate.tenancy.auth import StaticKeyAuthenticator


@dataclass
class Gateway:
    """The parts one gateway process is made of."""

    config: Config
    registry: ReplicaRegistry
    client: EngineClient
    proxy: Proxy
    health: HealthChecker


def remote_replicas(engines: list[EngineEndpoint]) -> list[Replica]:
    """Registry entries for engines started elsewhere."""
    return [
        Replica(
            id=e.id or f"engine-{i}",
            url=e.url,
            kind=e.kind,
            models=set(e.models),
            gpu_type=e.gpu_type,
        )
        for i, e in enumerate(engines)
    ]


def build_gateway(config: Config, registry: ReplicaRegistry) -> Gateway:
    """Wire the gateway's parts from config; nothing runs until the app's lifespan starts."""
    client = EngineClient(config.gateway)
    proxy = Proxy(
        config.gateway,
        registry,
        make_router(config.gateway.router),
        client,
        StaticKeyAuthenticator(config.gateway.demo_api_key),
    )
    health = HealthChecker(registry, client, config.gateway.health_interval, timeout=2.0)
    return Gateway(config, registry, client, proxy, health)


def build_app(gateway: Gateway) -> Starlette:
    """The ASGI app for a gateway."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.client.start()
        await gateway.health.check_all()
        gateway.health.start()
        try:
            yield
        finally:
            await gateway.health.stop()
            await gateway.client.close()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        healthy = [r.id for r in gateway.registry.all() if r.healthy]
        status = 200 if healthy else 503
        return JSONResponse(
            {"status": "ready" if healthy else "no healthy replica", "healthy_replicas": healthy}, status_code=status
        )

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *openai.routes(gateway.proxy),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: api_error_handler, HTTPException: http_exception_handler},
    )
