"""The tenants / keys / apply commands against a real SQLite store, as scripts use them (--json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_tenant_lifecycle(cli: Any) -> None:
    created = json.loads(
        cli(
            "tenants",
            "create",
            "acme",
            "--rpm",
            "600",
            "--tpm",
            "200000",
            "--budget",
            "50",
            "--models",
            "smollm2,other",
            "--json",
        ).stdout
    )
    assert created["rpm"] == 600 and created["budget"] == 50.0 and created["models"] == ["other", "smollm2"]
    again = cli("tenants", "create", "acme", ok=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    updated = json.loads(cli("tenants", "update", "acme", "--rpm", "700", "--json").stdout)
    assert updated["rpm"] == 700 and updated["tpm"] == 200000  # other settings kept
    assert json.loads(cli("tenants", "suspend", "acme", "--json").stdout)["status"] == "suspended"
    assert json.loads(cli("tenants", "resume", "acme", "--json").stdout)["status"] == "active"
    assert [t["external_id"] for t in json.loads(cli("tenants", "list", "--json").stdout)] == ["acme"]
    cli("tenants", "delete", "acme", "--json")
    assert json.loads(cli("tenants", "list", "--json").stdout) == []
    missing = cli("tenants", "show", "acme", ok=False)
    assert missing.returncode == 1 and "no tenant" in missing.stderr


def test_bad_option_names_the_field(cli: Any) -> None:
    result = cli("tenants", "create", "acme", "--priority", "urgent", ok=False)
    assert result.returncode == 1 and "priority" in result.stderr


def test_keys_shown_once(cli: Any) -> None:
    cli("tenants", "create", "acme")
    new = json.loads(cli("keys", "create", "acme", "--name", "ci", "--json").stdout)
    assert new["key"].startswith("fg-") and new["prefix"] == new["key"][:11]
    listed = json.loads(cli("keys", "list", "acme", "--json").stdout)
    assert listed[0]["id"] == new["id"] and "key" not in listed[0]
    assert new["key"] not in cli("keys", "list", "acme").stdout
    rotated = json.loads(cli("keys", "rotate", new["id"], "--grace-seconds", "60", "--json").stdout)
    assert rotated["key"] != new["key"]
    revoked = json.loads(cli("keys", "revoke", rotated["id"], "--json").stdout)
    assert revoked["revoked_at"] is not None


def test_apply_is_idempotent_and_suspends_removed(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - external_id: a\n    rpm: 10\n  - external_id: b\n    budget: 5\n")
    first = json.loads(cli("apply", "-f", str(path), "--json").stdout)
    assert sorted(first["created"]) == ["a", "b"] and first["changed"]
    second = json.loads(cli("apply", "-f", str(path), "--json").stdout)
    assert second["changed"] is False and sorted(second["unchanged"]) == ["a", "b"]
    path.write_text("tenants:\n  - external_id: a\n    rpm: 10\n")
    third = json.loads(cli("apply", "-f", str(path), "--json").stdout)
    assert third["suspended"] == ["b"] and not third["created"]
    assert json.loads(cli("tenants", "show", "b", "--json").stdout)["status"] == "suspended"


def test_apply_rejects_bad_files(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - external_id: a\n    rpm: -5\n")
    result = cli("apply", "-f", str(path), ok=False)
    assert result.returncode == 1 and "tenants[0]: rpm" in result.stderr
    path.write_text("tenants:\n  - external_id: a\n  - external_id: a\n")
    assert "duplicate external_id a" in cli("apply", "-f", str(path), ok=False).stderr
