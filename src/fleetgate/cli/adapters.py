"""`fleetgate adapters add|list|show|remove`: the LoRA adapter registry (same database as the tenants)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fleetgate.cli.common import ConfigOption, JsonOption, console, fail, print_json
from fleetgate.cli.store import with_store
from fleetgate.lora.catalog import Adapter, AdapterSpec, AdapterStore
from fleetgate.tenancy.store import TenantStore

app = typer.Typer(help="Register LoRA adapters and say which tenants may use them.", no_args_is_help=True)


@app.command()
def add(
    name: str = typer.Argument(..., help="the adapter's name; requests use it as `model` (or `base:name`)"),
    base: str = typer.Option(..., "--base", help="the base model it applies to, as the replicas serve it"),
    path: str = typer.Option(..., "--path", help="a folder the engines can read (PEFT adapter files)"),
    owner: list[str] = typer.Option([], "--owner", "-o", help="tenant external id that may use it (repeatable)"),
    pinned: bool = typer.Option(False, "--pinned", help="keep it loaded on every replica of the base"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Register an adapter, or replace its record (idempotent)."""
    try:
        spec = AdapterSpec(name=name, base_model=base, path=path, owners=owner, pinned=pinned)
    except ValueError as exc:
        fail(f"invalid adapter: {exc}")

    async def action(store: TenantStore) -> tuple[Adapter, str]:
        for tenant in spec.owners:
            await store.require_tenant(tenant)  # a typo in an owner would silently lock the adapter away
        return await AdapterStore(store.engine).put(spec)

    adapter, outcome = with_store(config_path, action)
    if as_json:
        print_json({**adapter.public(), "change": outcome})
    else:
        console.print(f"adapter {adapter.name} {outcome} (base {adapter.base_model})", highlight=False)


@app.command("list")
def list_(config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every registered adapter."""

    async def action(store: TenantStore) -> list[Adapter]:
        return await AdapterStore(store.engine).list()

    found = with_store(config_path, action)
    if as_json:
        print_json([a.public() for a in found])
        return
    table = Table("name", "base", "owners", "pinned", "path")
    for a in found:
        table.add_row(a.name, a.base_model, ", ".join(a.owners) or "-", "yes" if a.pinned else "", a.path)
    console.print(table)


@app.command()
def show(name: str, config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """One adapter's record."""

    async def action(store: TenantStore) -> Adapter | None:
        return await AdapterStore(store.engine).get(name)

    adapter = with_store(config_path, action)
    if adapter is None:
        fail(f"no adapter named {name!r}")
    if as_json:
        print_json(adapter.public())
    else:
        for key, value in adapter.public().items():
            console.print(f"{key}: {value}", highlight=False)


@app.command()
def remove(name: str, config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Forget an adapter; gateways stop serving it within a poll interval and replicas unload it as they need room."""

    async def action(store: TenantStore) -> None:
        await AdapterStore(store.engine).remove(name)

    with_store(config_path, action)
    if as_json:
        print_json({"removed": name})
    else:
        console.print(f"adapter {name} removed")
