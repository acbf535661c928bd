"""`GET /v1/models`: the models the calling tenant may use, and its own LoRA adapters."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from fleetgate.api.app import GET
from fleetgate.api.auth import Tenant
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.lora.pool import AdapterPool


def models_router(registry: ReplicaRegistry, adapters: AdapterPool | None) -> APIRouter:
    """The model list, OpenAI's shape; an adapter names its base model as `parent` (vLLM's shape)."""
    router = APIRouter()

    @router.api_route("/v1/models", methods=GET)
    async def list_models(principal: Tenant) -> Response:
        created = int(time.time())
        tenant = principal.tenant
        bases = registry.models()
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": created, "owned_by": "fleetgate"}
            for name in sorted(bases)
            if tenant.allows_model(name)
        ]
        if adapters is not None:
            # Only the caller's own adapters: another tenant's adapter is never visible.
            data += [
                {"id": a.name, "object": "model", "created": created, "owned_by": "fleetgate", "parent": a.base_model}
                for a in sorted(adapters.catalog.visible_to(tenant), key=lambda a: a.name)
                if a.base_model in bases
            ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    return router
