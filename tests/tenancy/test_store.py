"""Tenants and keys in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from fleetgate.domain.errors import NotFound
from fleetgate.tenancy.keys import hash_key
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[TenantStore]:
    opened = await TenantStore.open(db_url)
    yield opened
    await opened.close()


async def test_upsert_is_idempotent_and_bumps_revision_only_on_change(store: TenantStore) -> None:
    spec = TenantSpec(external_id="acme", rpm=600, budget=50.0, models=["smollm2"])
    rev0 = await store.revision()
    tenant, outcome = await store.upsert_tenant(spec)
    assert outcome == "created" and tenant.budget_micros == 50_000_000 and tenant.name == "acme"
    rev1 = await store.revision()
    assert rev1 > rev0
    again, outcome = await store.upsert_tenant(spec)
    assert outcome == "unchanged" and again.id == tenant.id and await store.revision() == rev1
    changed, outcome = await store.upsert_tenant(spec.model_copy(update={"rpm": 700}))
    assert outcome == "updated" and changed.rpm == 700 and await store.revision() > rev1


async def test_key_is_stored_hashed_and_looked_up(store: TenantStore) -> None:
    await store.upsert_tenant(TenantSpec(external_id="acme"))
    key, info = await store.create_key("acme", name="ci")
    assert key.startswith("fg-") and len(key) > 30
    assert info.prefix == key[:11] and info.key_hash == hash_key(key)
    async with store.engine.connect() as conn:
        from sqlalchemy import text

        dump = str((await conn.execute(text("SELECT * FROM api_keys"))).all())
    assert key not in dump  # never stored in plaintext
    found = await store.lookup(hash_key(key))
    assert found is not None and found[1].external_id == "acme" and found[0].id == info.id
    assert await store.lookup(hash_key("fg-unknown")) is None


async def test_revoke_and_rotate_with_grace(store: TenantStore) -> None:
    await store.upsert_tenant(TenantSpec(external_id="acme"))
    _, old = await store.create_key("acme")
    new_key, new = await store.rotate_key(old.id, grace_seconds=60)
    old_now = await store.get_key(old.id)
    now = datetime.now(UTC)
    assert old_now.usable_at(now) and not old_now.usable_at(now + timedelta(seconds=61))
    assert new.usable_at(now + timedelta(days=365)) and new.id != old.id
    revoked = await store.revoke_key(new.id)
    assert revoked.revoked_at is not None and not revoked.usable_at(datetime.now(UTC) + timedelta(seconds=1))
    _, third = await store.create_key("acme")
    rotated_key, _ = await store.rotate_key(third.id)  # no grace: the old key stops at once
    assert not (await store.get_key(third.id)).usable_at(datetime.now(UTC) + timedelta(seconds=1))
    newest = (await store.list_keys("acme"))[0]
    assert newest.id != third.id
    assert rotated_key != new_key


async def test_apply_upserts_and_suspends_but_never_deletes(store: TenantStore) -> None:
    await store.upsert_tenant(TenantSpec(external_id="seeded"), managed_by="fleetgate")
    first = [TenantSpec(external_id="a", rpm=10), TenantSpec(external_id="b")]
    report = await store.apply(first)
    assert sorted(report.created) == ["a", "b"] and report.changed
    report = await store.apply(first)
    assert not report.changed and sorted(report.unchanged) == ["a", "b"]
    report = await store.apply([TenantSpec(external_id="a", rpm=20)])
    assert report.updated == ["a"] and report.suspended == ["b"]
    b = await store.get_tenant("b")
    assert b is not None and b.status == "suspended"
    seeded = await store.get_tenant("seeded")
    assert seeded is not None and seeded.status == "active"  # not the operator's: apply leaves it alone
    report = await store.apply([TenantSpec(external_id="a", rpm=20), TenantSpec(external_id="b")])
    assert report.updated == ["b"]  # listing it again resumes it
    assert (await store.get_tenant("b")).status == "active"  # type: ignore[union-attr]


async def test_delete_keeps_row_and_revokes_keys(store: TenantStore) -> None:
    await store.upsert_tenant(TenantSpec(external_id="gone"))
    _, key = await store.create_key("gone")
    await store.delete_tenant("gone")
    tenant = await store.get_tenant("gone")
    assert tenant is not None and tenant.status == "deleted"
    assert (await store.get_key(key.id)).revoked_at is not None
    assert [t.external_id for t in await store.list_tenants()] == []
    with pytest.raises(NotFound):
        await store.require_tenant("gone")


async def test_ensure_key_restores_a_known_key(store: TenantStore) -> None:
    await store.upsert_tenant(TenantSpec(external_id="demo"))
    info = await store.ensure_key("demo", "fg-demo-key-123456", "demo")
    await store.revoke_key(info.id)
    again = await store.ensure_key("demo", "fg-demo-key-123456", "demo")
    assert again.id == info.id and again.revoked_at is None
