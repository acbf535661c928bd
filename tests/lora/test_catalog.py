"""The LoRA adapter registry: records in the store (SQLite and PostgreSQL), access rules, and request resolution."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetgate.domain.errors import InvalidRequest, ModelNotFound, NotFound
from fleetgate.lora.catalog import AdapterCatalog, AdapterSpec, AdapterStore
from fleetgate.tenancy.models import Tenant, TenantSpec
from fleetgate.tenancy.store import TenantStore


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[TenantStore]:
    opened = await TenantStore.open(db_url)
    yield opened
    await opened.close()


async def _tenant(store: TenantStore, external_id: str, **spec: object) -> Tenant:
    tenant, _ = await store.upsert_tenant(TenantSpec.model_validate({"external_id": external_id, **spec}))
    return tenant


def test_names_must_be_usable_as_a_model() -> None:
    AdapterSpec(name="sql-lora_v1.2", base_model="smollm2", path="/a")
    for bad in ("", "has space", "base:adapter", "-leading", "x" * 201):
        with pytest.raises(ValueError):
            AdapterSpec(name=bad, base_model="smollm2", path="/a")


async def test_put_list_remove_and_revision(store: TenantStore) -> None:
    adapters = AdapterStore(store.engine)
    rev0 = await store.revision()
    created, outcome = await adapters.put(AdapterSpec(name="a1", base_model="smollm2", path="/x", owners=["t2", "t1"]))
    assert outcome == "created" and created.owners == ["t1", "t2"] and not created.pinned
    assert await store.revision() > rev0  # gateways reload their catalog on this
    updated, outcome = await adapters.put(AdapterSpec(name="a1", base_model="smollm2", path="/y", pinned=True))
    assert outcome == "updated" and updated.path == "/y" and updated.pinned and updated.created_at == created.created_at
    assert [a.name for a in await adapters.list()] == ["a1"]
    await adapters.remove("a1")
    assert await adapters.get("a1") is None
    with pytest.raises(NotFound):
        await adapters.remove("a1")


async def test_resolve_names_owner_access_and_errors(store: TenantStore) -> None:
    adapters = AdapterStore(store.engine)
    owner = await _tenant(store, "owner")
    granted = await _tenant(store, "granted", adapters=["a1"])
    other = await _tenant(store, "other")
    narrow = await _tenant(store, "narrow", models=["other-model"], adapters=["a1"])
    await adapters.put(AdapterSpec(name="a1", base_model="smollm2", path="/x", owners=["owner"]))
    catalog = AdapterCatalog(adapters)
    await catalog.reload()
    bases = {"smollm2"}

    assert catalog.resolve("smollm2", owner, bases).adapter is None  # a base model is never an adapter
    by_name = catalog.resolve("a1", owner, bases)
    assert by_name.model == "smollm2" and by_name.adapter is not None and by_name.engine_model == "a1"
    assert catalog.resolve("smollm2:a1", granted, bases).adapter is not None  # the tenant's allowlist grants it
    # Another tenant's adapter is answered like a name that does not exist (issue 17.9: no adapter names leak).
    assert catalog.resolve("a1", other, bases).adapter is None  # the gateway answers 404 for it
    assert catalog.resolve("a1", narrow, bases).adapter is None  # its base model is not on the tenant's allowlist
    with pytest.raises(ModelNotFound, match="no LoRA adapter named `a1`"):
        catalog.resolve("smollm2:a1", other, bases)
    with pytest.raises(ModelNotFound):
        catalog.resolve("llama:a1", other, bases)  # not even which base model it belongs to
    with pytest.raises(InvalidRequest, match="belongs to base model `smollm2`"):
        catalog.resolve("llama:a1", owner, bases)
    with pytest.raises(ModelNotFound):
        catalog.resolve("smollm2:nope", owner, bases)
    assert catalog.resolve("unknown-model", owner, bases).adapter is None  # the proxy answers 404 for it
    assert [a.name for a in catalog.visible_to(owner)] == ["a1"]
    assert catalog.visible_to(other) == []
