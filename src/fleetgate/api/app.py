"""The one FastAPI app behind the fast lane: every surface but the completion POSTs, one way to authenticate
(api.auth), one way to answer errors (api.errors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from fastapi import APIRouter, FastAPI

from fleetgate.api.auth import Credentials
from fleetgate.api.errors import install_error_handlers

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
# A route that answers plain GETs also answers HEAD, as Starlette's own routes do (FastAPI's do not by themselves).
GET = ["GET", "HEAD"]


def make_api(routers: Sequence[APIRouter], credentials: Credentials, lifespan: Lifespan | None = None) -> FastAPI:
    """An app serving `routers`; the admin API documents itself (api.admin), so the app publishes no OpenAPI."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.credentials = credentials
    install_error_handlers(app)
    for router in routers:
        app.include_router(router)
    return app
