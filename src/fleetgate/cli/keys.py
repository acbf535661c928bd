"""`fleetgate keys ...`: create (shown once), list, rotate, revoke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.table import Table

from fleetgate.cli.common import ConfigOption, JsonOption, console, print_json
from fleetgate.cli.store import with_store
from fleetgate.tenancy.models import ApiKeyInfo
from fleetgate.tenancy.views import key_view

app = typer.Typer(help="Manage API keys (stored hashed; a key is shown once).", no_args_is_help=True)


def _print_new(key: str, info: ApiKeyInfo, as_json: bool, note: str = "") -> None:
    view = key_view(info).model_dump(mode="json")
    if as_json:
        print_json({**view, "key": key})
        return
    console.print(f"[bold]{key}[/]", highlight=False)
    console.print(f"key id {info.id}; shown once, only its hash is stored.{note}", highlight=False)


@app.command()
def create(
    tenant: str = typer.Argument(..., help="the tenant's external id"),
    name: str | None = typer.Option(None, help="a label for the key"),
    expires_in_days: float | None = typer.Option(None, "--expires-in-days", min=0.0001),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a key for a tenant and print it (once)."""
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    key, info = with_store(config_path, lambda store: store.create_key(tenant, name=name, expires_at=expires))
    _print_new(key, info, as_json)


@app.command("list")
def list_(tenant: str, config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """List a tenant's keys (prefixes only)."""
    keys = with_store(config_path, lambda store: store.list_keys(tenant))
    if as_json:
        print_json([key_view(k).model_dump(mode="json") for k in keys])
        return
    table = Table("id", "prefix", "name", "created", "expires", "revoked")
    for k in keys:
        table.add_row(
            k.id,
            k.prefix + "…",
            k.name or "-",
            k.created_at.isoformat(timespec="seconds"),
            k.expires_at.isoformat(timespec="seconds") if k.expires_at else "-",
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
        )
    console.print(table)


@app.command()
def rotate(
    key_id: str,
    grace_seconds: float = typer.Option(0.0, "--grace-seconds", min=0, help="keep the old key valid this long"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Issue a new key for the same tenant; the old one stops after the grace period."""
    key, info = with_store(config_path, lambda store: store.rotate_key(key_id, grace_seconds))
    _print_new(key, info, as_json, f" The old key works for {grace_seconds:g} more seconds." if grace_seconds else "")


@app.command()
def revoke(key_id: str, config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Revoke a key now (every gateway stops accepting it within a second)."""
    info = with_store(config_path, lambda store: store.revoke_key(key_id))
    if as_json:
        print_json(key_view(info).model_dump(mode="json"))
    else:
        console.print(f"revoked {info.prefix}… ({info.id})", highlight=False)
