"""`fleetgate adapters` against a real SQLite store, as scripts use them (--json)."""

from __future__ import annotations

import json
from typing import Any


def test_adapter_lifecycle(cli: Any) -> None:
    cli("tenants", "create", "acme")
    added = json.loads(
        cli("adapters", "add", "sql-lora", "--base", "smollm2", "--path", "/m/sql", "--owner", "acme", "--json").stdout
    )
    assert added["change"] == "created" and added["owners"] == ["acme"] and added["pinned"] is False
    again = json.loads(
        cli("adapters", "add", "sql-lora", "--base", "smollm2", "--path", "/m/sql2", "--pinned", "--json").stdout
    )
    assert again["change"] == "updated" and again["path"] == "/m/sql2" and again["pinned"] is True
    listed = json.loads(cli("adapters", "list", "--json").stdout)
    assert [a["name"] for a in listed] == ["sql-lora"]
    assert json.loads(cli("adapters", "show", "sql-lora", "--json").stdout)["base_model"] == "smollm2"
    assert json.loads(cli("adapters", "remove", "sql-lora", "--json").stdout) == {"removed": "sql-lora"}
    assert json.loads(cli("adapters", "list", "--json").stdout) == []


def test_adapter_errors_say_what_to_fix(cli: Any) -> None:
    bad_owner = cli("adapters", "add", "x", "--base", "smollm2", "--path", "/p", "--owner", "nobody", ok=False)
    assert bad_owner.returncode != 0 and "nobody" in bad_owner.stderr + bad_owner.stdout
    bad_name = cli("adapters", "add", "base:x", "--base", "smollm2", "--path", "/p", ok=False)
    assert bad_name.returncode != 0 and "invalid adapter" in bad_name.stderr + bad_name.stdout
    missing = cli("adapters", "remove", "ghost", ok=False)
    assert missing.returncode != 0 and "ghost" in missing.stderr + missing.stdout
