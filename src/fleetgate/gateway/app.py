"""A gateway's ASGI app: the completion paths' fast lane in front of the FastAPI app that serves every other
surface, whose lifespan runs the gateway's components (gateway.components, gateway.lifecycle)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from fleetgate.api.adapters import admin_adapters_router
from fleetgate.api.admin import admin_router
from fleetgate.api.app import make_api
from fleetgate.api.auth import Credentials
from fleetgate.api.dashboard import dashboard_router
from fleetgate.api.health import health_router
from fleetgate.api.iolog import iolog_router
from fleetgate.api.lanes import FastLane
from fleetgate.api.models import models_router
from fleetgate.api.usage import admin_usage_router, usage_router
from fleetgate.billing.rating import Rating
from fleetgate.gateway.components import components
from fleetgate.gateway.lifecycle import running
from fleetgate.gateway.parts import Gateway
from fleetgate.observability.dashboard import ledger_usage_today
from fleetgate.observability.readiness import Readiness


def _readiness(gateway: Gateway) -> Readiness:
    store, gate, metering = gateway.tenancy.store, gateway.tenancy.gate, gateway.metering
    return Readiness(
        gateway.fleet.registry,
        store,
        lambda: len(getattr(gate.auth, "_cache", ())),  # keys that authenticate without the store
        metering.ledger.engine,
        metering.flusher,
        metering.outbox,
        gate.limiter,
    )


def routers(gateway: Gateway) -> list[APIRouter]:
    """Every surface but the completion POSTs: probes, models, usage, logs, the dashboard, the admin API."""
    fleet, metering, serving = gateway.fleet, gateway.metering, gateway.serving
    store, ledger = gateway.tenancy.store, metering.ledger
    rating = Rating(ledger.engine, policy=gateway.config.prices.policy, tenant_names=store.external_ids)
    found = [
        health_router(_readiness(gateway), serving.metrics),
        models_router(fleet.registry, fleet.adapters),
        usage_router(ledger, rating),
        iolog_router(metering.iolog),
        dashboard_router(serving.timeseries, fleet.registry, ledger_usage_today(ledger, rating)),
    ]
    if gateway.config.gateway.admin_api_key is not None:  # else no /admin at all: every path there is a 404
        extra = [admin_usage_router(ledger, rating), admin_adapters_router(fleet.adapters, fleet.registry)]
        found.append(admin_router(store, fleet.registry, extra))
    return found


def build_app(gateway: Gateway) -> FastLane:
    """The ASGI app for a gateway; its lifespan starts the components in order and stops them in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(components(gateway)):
            yield

    gate, config = gateway.tenancy.gate, gateway.config
    credentials = Credentials.of(
        config.gateway.admin_api_key, config.observability.metrics_token, gate.authenticate, gate.auth.failures
    )
    return FastLane(make_api(routers(gateway), credentials, lifespan), gateway.serving.completions)
