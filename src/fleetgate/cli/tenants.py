"""`fleetgate tenants ...`: create, show, list, update, suspend, resume, delete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from fleetgate.cli.common import ConfigOption, JsonOption, console, fail, print_json
from fleetgate.cli.store import with_store
from fleetgate.domain.errors import InvalidRequest
from fleetgate.tenancy.models import Tenant, TenantSpec
from fleetgate.tenancy.store import TenantStore
from fleetgate.tenancy.views import tenant_view

app = typer.Typer(help="Manage tenants (the operator's customers).", no_args_is_help=True)


def _limits(
    name: str | None,
    rpm: int | None,
    tpm: int | None,
    budget: float | None,
    max_concurrency: int | None,
    max_input_tokens: int | None,
    max_output_tokens: int | None,
    max_tokens_policy: str | None,
    priority: str | None,
    weight: int | None,
    models: list[str] | None,
    adapters: list[str] | None,
    io_log: bool | None = None,
    io_log_retention_days: float | None = None,
) -> dict[str, Any]:
    values = {
        "name": name,
        "rpm": rpm,
        "tpm": tpm,
        "budget": budget,
        "max_concurrency": max_concurrency,
        "max_input_tokens": max_input_tokens,
        "max_output_tokens": max_output_tokens,
        "max_tokens_policy": max_tokens_policy,
        "priority": priority,
        "weight": weight,
        "models": _split(models),
        "adapters": _split(adapters),
        "io_log": io_log,
        "io_log_retention_days": io_log_retention_days,
    }
    return {k: v for k, v in values.items() if v is not None}


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _spec(data: dict[str, Any]) -> TenantSpec:
    try:
        return TenantSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid tenant: {problems}")


def _show(tenant: Tenant, as_json: bool) -> None:
    view = tenant_view(tenant)
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    table = Table(show_header=False)
    for key, value in view.model_dump(mode="json").items():
        table.add_row(key, "-" if value is None else ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


NameOpt = typer.Option(None, help="display name")
RpmOpt = typer.Option(None, "--rpm", help="requests per minute")
TpmOpt = typer.Option(None, "--tpm", help="tokens per minute")
BudgetOpt = typer.Option(None, "--budget", help="monthly spend cap in currency units")
ConcOpt = typer.Option(None, "--max-concurrency", help="requests in flight at once")
InOpt = typer.Option(None, "--max-input-tokens", help="cap on estimated prompt tokens")
OutOpt = typer.Option(None, "--max-output-tokens", help="cap on max_tokens")
PolicyOpt = typer.Option(None, "--max-tokens-policy", help="clamp | reject a max_tokens above the cap")
PrioOpt = typer.Option(None, "--priority", help="interactive | standard | batch")
WeightOpt = typer.Option(None, "--weight", help="fair-share weight")
ModelsOpt = typer.Option(None, "--models", help="allowed models, comma-separated ('*' = all)")
AdaptersOpt = typer.Option(None, "--adapters", help="allowed LoRA adapters, comma-separated")
IOLogOpt = typer.Option(None, "--io-log/--no-io-log", help="keep requests and responses in the I/O log")
IOLogDaysOpt = typer.Option(None, "--io-log-retention-days", help="how long the I/O log keeps them")


StoreAction = Callable[[TenantStore], Awaitable[Tenant]]


def _create(external_id: str, fields: dict[str, Any]) -> StoreAction:
    spec = _spec({"external_id": external_id, **fields})  # checked before the store is opened

    async def run(store: TenantStore) -> Tenant:
        if await store.get_tenant(external_id) is not None:
            raise InvalidRequest(f"tenant {external_id!r} already exists: change it with `fleetgate tenants update`")
        return (await store.upsert_tenant(spec))[0]

    return run


def _update(external_id: str, fields: dict[str, Any]) -> StoreAction:
    async def run(store: TenantStore) -> Tenant:
        current = (await store.require_tenant(external_id)).to_spec().model_dump()
        return (await store.upsert_tenant(_spec({**current, **fields})))[0]

    return run


def _settings_command(action: Callable[[str, dict[str, Any]], StoreAction], doc: str) -> Any:
    """`create` and `update`: the same settings as options, applied by `action`."""

    def command(
        external_id: str = typer.Argument(..., help="your own id for this tenant"),
        name: str | None = NameOpt,
        rpm: int | None = RpmOpt,
        tpm: int | None = TpmOpt,
        budget: float | None = BudgetOpt,
        max_concurrency: int | None = ConcOpt,
        max_input_tokens: int | None = InOpt,
        max_output_tokens: int | None = OutOpt,
        max_tokens_policy: str | None = PolicyOpt,
        priority: str | None = PrioOpt,
        weight: int | None = WeightOpt,
        models: list[str] | None = ModelsOpt,
        adapters: list[str] | None = AdaptersOpt,
        io_log: bool | None = IOLogOpt,
        io_log_retention_days: float | None = IOLogDaysOpt,
        config_path: Path | None = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        fields = _limits(
            name,
            rpm,
            tpm,
            budget,
            max_concurrency,
            max_input_tokens,
            max_output_tokens,
            max_tokens_policy,
            priority,
            weight,
            models,
            adapters,
            io_log,
            io_log_retention_days,
        )
        _show(with_store(config_path, action(external_id, fields)), as_json)

    command.__doc__ = doc
    return command


app.command("create")(
    _settings_command(
        _create, "Create a tenant (fails if it exists: use `update`, `apply` or PUT /admin/tenants/{id})."
    )
)
app.command("update")(_settings_command(_update, "Change some settings of a tenant; the others stay."))


@app.command()
def show(external_id: str, config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Show one tenant."""
    _show(with_store(config_path, lambda store: store.require_tenant(external_id)), as_json)


@app.command("list")
def list_(
    include_deleted: bool = typer.Option(False, "--all", help="include deleted tenants"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """List tenants."""
    tenants = with_store(config_path, lambda store: store.list_tenants(include_deleted))
    if as_json:
        print_json([tenant_view(t).model_dump(mode="json") for t in tenants])
        return
    table = Table("external id", "name", "status", "priority", "rpm", "tpm", "conc.", "budget", "models")
    for t in tenants:
        v = tenant_view(t)
        table.add_row(
            v.external_id,
            v.name,
            v.status,
            v.priority,
            *(str(x) if x is not None else "-" for x in (v.rpm, v.tpm, v.max_concurrency, v.budget)),
            ", ".join(v.models),
        )
    console.print(table)


def _status_command(status: str, verb: str) -> Any:
    def command(external_id: str, config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
        _show(with_store(config_path, lambda store: store.set_status(external_id, status)), as_json)

    command.__doc__ = f"{verb} a tenant."
    return command


app.command("suspend")(_status_command("suspended", "Suspend (requests get 403 until resumed)"))
app.command("resume")(_status_command("active", "Resume"))


@app.command()
def delete(
    external_id: str,
    yes: bool = typer.Option(False, "--yes", help="do not ask"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete a tenant: its keys are revoked; the row and its usage history stay."""
    if not yes and not as_json:
        typer.confirm(f"delete tenant {external_id!r} and revoke its keys?", abort=True)
    with_store(config_path, lambda store: store.delete_tenant(external_id))
    if as_json:
        print_json({"deleted": external_id})
    else:
        console.print(f"deleted tenant {external_id}")
