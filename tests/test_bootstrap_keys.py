"""No well-known keys: random keys generated once into a 0600 file, a public bind refused while a demo key is on,
and a revoked demo key stays revoked across restarts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetgate.config import AUTO_KEY, Config, GatewayConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.gateway.components import seed_demo_tenant
from fleetgate.tenancy.bootstrap_keys import (
    PUBLISHED_ADMIN_KEY,
    PUBLISHED_DEMO_KEY,
    check_public_bind,
    is_loopback,
    key_file_path,
    resolve_keys,
    shown_keys,
)
from fleetgate.tenancy.keys import KEY_PREFIX, generate_key, hash_key, key_prefix
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("FLEETGATE_STATE_DIR", str(state))
    return state


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[TenantStore]:
    opened = await TenantStore.open(sqlite_url)
    yield opened
    await opened.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_defaults_name_no_fixed_key() -> None:
    gateway = GatewayConfig()
    assert gateway.demo_api_key == AUTO_KEY and gateway.admin_api_key == AUTO_KEY
    assert not gateway.allow_public_demo_key
    with pytest.raises(ValueError, match="auto"):
        GatewayConfig(admin_api_key="short")


def test_first_start_generates_random_keys_in_a_private_file(state_dir: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        config = resolve_keys(Config())
    finally:
        os.umask(old_umask)
    demo, admin = config.gateway.demo_api_key, config.gateway.admin_api_key
    assert demo is not None and admin is not None and demo != admin
    for key in (demo, admin):  # the shape `fleetgate keys create` gives
        assert key.startswith(KEY_PREFIX) and len(key) == len(generate_key()) and "0123456789abcdef" not in key
    path = key_file_path()
    assert path.parent == state_dir and _mode(path) == 0o600 and _mode(state_dir) == 0o700
    assert json.loads(path.read_text())["demo_api_key"] == demo
    again = resolve_keys(Config())  # a restart reads the same pair
    assert (again.gateway.demo_api_key, again.gateway.admin_api_key) == (demo, admin)
    assert [p.name for p in state_dir.iterdir()] == ["keys.json"]  # no temporary file left behind


def test_explicit_keys_win_and_need_no_file(state_dir: Path) -> None:
    config = Config.model_validate({"gateway": {"demo_api_key": None, "admin_api_key": "fg-operator-chosen-key"}})
    resolve_keys(config)
    assert config.gateway.admin_api_key == "fg-operator-chosen-key" and config.gateway.demo_api_key is None
    assert not key_file_path().exists()
    mixed = resolve_keys(Config.model_validate({"gateway": {"admin_api_key": "fg-operator-chosen-key"}}))
    assert mixed.gateway.admin_api_key == "fg-operator-chosen-key"
    assert mixed.gateway.demo_api_key == json.loads(key_file_path().read_text())["demo_api_key"]


def test_gateways_starting_together_agree_on_one_pair(state_dir: Path) -> None:
    script = (
        "from fleetgate.config import Config; from fleetgate.tenancy.bootstrap_keys import resolve_keys;"
        "g = resolve_keys(Config()).gateway; print(g.demo_api_key, g.admin_api_key)"
    )
    env = {**os.environ, "FLEETGATE_STATE_DIR": str(state_dir)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    outputs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(outputs) == 1


def test_status_shows_the_keys_in_force(state_dir: Path) -> None:
    assert shown_keys(Config())["demo_api_key"] is None  # never started: nothing generated, nothing invented
    config = resolve_keys(Config())
    shown = shown_keys(Config())
    assert (
        shown["demo_api_key"] == config.gateway.demo_api_key and shown["admin_api_key"] == config.gateway.admin_api_key
    )
    assert shown["key_file"] == str(key_file_path()) and shown["key_file_error"] is None
    key_file_path().write_text("{not json")
    assert "damaged" in str(shown_keys(Config())["key_file_error"])


def test_cli_status_json_shows_the_generated_keys(state_dir: Path, tmp_path: Path) -> None:
    config = resolve_keys(Config())
    env = {**os.environ, "FLEETGATE_STATE_DIR": str(state_dir), "FLEETGATE_RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run(
        [sys.executable, "-m", "fleetgate.cli.main", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1  # nothing runs
    keys = json.loads(result.stdout)["keys"]
    assert keys["demo_api_key"] == config.gateway.demo_api_key
    assert keys["admin_api_key"] == config.gateway.admin_api_key


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_binds_are_always_allowed(host: str) -> None:
    assert is_loopback(host)
    check_public_bind(GatewayConfig(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "gateway.example.com"])
def test_a_public_bind_is_refused_while_a_demo_key_is_active(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="allow_public_demo_key") as refused:
        check_public_bind(GatewayConfig(host=host))
    assert "demo key is active" in str(refused.value)
    check_public_bind(GatewayConfig(host=host, allow_public_demo_key=True))  # the operator said so
    check_public_bind(GatewayConfig(host=host, demo_api_key=None))  # no demo key, generated admin key


def test_a_public_bind_is_refused_without_an_admin_key_or_with_the_published_one() -> None:
    with pytest.raises(ConfigError, match="no admin key"):
        check_public_bind(GatewayConfig(host="0.0.0.0", demo_api_key=None, admin_api_key=None))
    with pytest.raises(ConfigError, match="published"):
        check_public_bind(GatewayConfig(host="0.0.0.0", demo_api_key=None, admin_api_key=PUBLISHED_ADMIN_KEY))


def test_up_refuses_a_public_bind_before_starting_anything(state_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FLEETGATE_STATE_DIR": str(state_dir), "FLEETGATE_RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run(
        [sys.executable, "-m", "fleetgate.cli.main", "up", "--host", "0.0.0.0", "--engine", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "gateway.allow_public_demo_key: true" in result.stderr and "0.0.0.0" in result.stderr
    assert not (tmp_path / "run" / "state.json").exists()


async def test_a_revoked_demo_key_stays_revoked_across_restarts(store: TenantStore) -> None:
    config = Config.model_validate({"gateway": {"demo_api_key": "fg-demo-key-for-this-test-01"}})
    await seed_demo_tenant(config, store)
    found = await store.lookup(hash_key("fg-demo-key-for-this-test-01"))
    assert found is not None and found[0].revoked_at is None and found[1].external_id == "demo"
    await store.revoke_key(found[0].id)
    await seed_demo_tenant(config, store)  # the next start
    again = await store.lookup(hash_key("fg-demo-key-for-this-test-01"))
    assert again is not None and again[0].revoked_at is not None
    assert len(await store.list_keys("demo")) == 1


async def test_operator_edits_to_the_demo_tenant_are_kept(store: TenantStore) -> None:
    config = Config.model_validate({"gateway": {"demo_api_key": "fg-demo-key-for-this-test-02"}})
    await seed_demo_tenant(config, store)
    await store.upsert_tenant(TenantSpec(external_id="demo", name="Demo tenant", rpm=5))
    await seed_demo_tenant(config, store)
    tenant = await store.get_tenant("demo")
    assert tenant is not None and tenant.rpm == 5


async def test_the_published_demo_key_of_older_versions_is_revoked(store: TenantStore) -> None:
    await store.upsert_tenant(TenantSpec(external_id="demo"))
    await store.create_key("demo", name="demo key from config", plaintext=PUBLISHED_DEMO_KEY)
    config = Config.model_validate({"gateway": {"demo_api_key": "fg-demo-key-for-this-test-03"}})
    await seed_demo_tenant(config, store)
    published = await store.lookup(hash_key(PUBLISHED_DEMO_KEY))
    assert published is not None and published[0].revoked_at is not None
    assert published[0].prefix == key_prefix(PUBLISHED_DEMO_KEY)
    fresh = await store.lookup(hash_key("fg-demo-key-for-this-test-03"))
    assert fresh is not None and fresh[0].revoked_at is None
    # An operator who names the published key explicitly keeps it (their choice, loopback only by default).
    explicit = Config.model_validate({"gateway": {"demo_api_key": PUBLISHED_DEMO_KEY}})
    other = await TenantStore.open(str(store.engine.url).replace("+aiosqlite", "") + "-2")
    try:
        await seed_demo_tenant(explicit, other)
        kept = await other.lookup(hash_key(PUBLISHED_DEMO_KEY))
        assert kept is not None and kept[0].revoked_at is None
    finally:
        await other.close()
