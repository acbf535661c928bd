"""Admin routes for LoRA adapters: the registry, plus where each adapter is loaded right now and load/unload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetgate.api.errors import error_responses
from fleetgate.domain.errors import InvalidRequest, NotFound
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.lora.catalog import AdapterSpec
from fleetgate.lora.pool import AdapterPool


class AdapterUpsert(BaseModel):
    """Body of `PUT /admin/adapters/{name}`: an AdapterSpec without the name (it is in the path)."""

    model_config = ConfigDict(extra="forbid")
    base_model: str
    path: str
    owners: list[str] = Field(default_factory=list)
    pinned: bool = False


def _placement(pool: AdapterPool, registry: ReplicaRegistry) -> dict[str, list[str]]:
    placed: dict[str, list[str]] = {}
    for replica in registry.all():
        for name in replica.adapters:
            placed.setdefault(name, []).append(replica.id)
    return placed


def admin_adapters_router(pool: AdapterPool, registry: ReplicaRegistry) -> APIRouter:
    """`/adapters`: register, list, show, remove; `loaded_on` is what the engines themselves report."""
    router = APIRouter(tags=["adapters"])
    store = pool.catalog.store

    @router.get("/adapters", summary="Registered LoRA adapters and the replicas that have each loaded")
    async def list_adapters() -> list[dict[str, Any]]:
        placed = _placement(pool, registry)
        return [{**a.public(), "loaded_on": sorted(placed.get(a.name, []))} for a in await store.list()]

    @router.get("/adapters/{name}", summary="One adapter", responses=error_responses(404))
    async def get_adapter(name: str) -> dict[str, Any]:
        adapter = await store.get(name)
        if adapter is None:
            raise NotFound(f"no adapter named {name!r}")
        return {**adapter.public(), "loaded_on": sorted(_placement(pool, registry).get(name, []))}

    @router.put("/adapters/{name}", summary="Register or update an adapter (idempotent)")
    async def put_adapter(name: str, body: AdapterUpsert, response: Response) -> dict[str, Any]:
        try:
            spec = AdapterSpec.model_validate({**body.model_dump(), "name": name})
        except ValueError as exc:
            raise InvalidRequest(f"invalid adapter: {exc}") from None
        adapter, outcome = await store.put(spec)
        await pool.catalog.reload()  # this process at once; the others within their poll interval
        response.status_code = 201 if outcome == "created" else 200
        return adapter.public()

    @router.delete(
        "/adapters/{name}",
        status_code=204,
        summary="Remove an adapter and unload it everywhere",
        responses=error_responses(404),
    )
    async def delete_adapter(name: str) -> None:
        await store.remove(name)
        await pool.catalog.reload()
        for replica in registry.all():
            if name in replica.adapters:
                await pool.unload(replica, name)

    return router
