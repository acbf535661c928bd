"""`fleetgate usage ...`: rated usage reports, versioned price books, and reconcile with the engines' counters.

`fleetgate usage` alone (or `usage report`) prints usage per tenant, model and UTC day with its charge, cost and
margin. `usage prices set -f prices.yaml` stores a new price book version from a YAML file shaped like this
(see prices.example.yaml; amounts in currency units, prices per 1M tokens, at most 6 decimals). It comes into force
a few seconds later (or at `--from`), when every gateway holds it: budgets and reports then both charge it.

    currency: USD                  # 3-8 capital letters
    note: November list prices     # optional
    prices:                        # by model; "base:adapter" for a LoRA adapter, "*" for any other model
      smollm2: {input: 0.10, cached_input: 0.05, output: 0.20}   # cached_input defaults to input
    tenant_overrides:              # by tenant external id, then model: these win over `prices`
      acme: {smollm2: {input: 0.08, cached_input: 0.04, output: 0.16}}
    gpu_costs:                     # the operator's cost, for margin: per_hour (busy time) or per_1m_tokens
      cpu: {per_hour: 0.05}
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import typer
import yaml
from pydantic import ValidationError
from rich.table import Table

from fleetgate.billing.price_books import lead_time
from fleetgate.billing.rating import PriceBook, PriceBookSpec, Rating
from fleetgate.billing.report import UsageReport, UsageTotals, usage_report
from fleetgate.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    err_console,
    fail,
    load,
    print_json,
    run_dir_for,
)
from fleetgate.cli.store import run_on_database
from fleetgate.config import Config
from fleetgate.local.reconcile_targets import replica_targets
from fleetgate.metering.ledger import SqlLedger
from fleetgate.metering.reconcile import Drift, reconcile
from fleetgate.tenancy.store import TenantStore

T = TypeVar("T")

app = typer.Typer(help="Usage, charges and margin from the ledger; price books; reconcile with engines.")
prices_app = typer.Typer(help="Versioned price books (a version is never edited).", no_args_is_help=True)
app.add_typer(prices_app, name="prices")

# Money as decimal text and exact micro-units, then the version each line was rated with.
CSV_COLUMNS = ("day", "tenant", "model", *UsageTotals.model_fields, "charge", "cost", "margin", "price_book_version")


@dataclass
class UsageContext:
    """What a usage command works with: the config, the ledger, rating and the tenant store."""

    config: Config
    ledger: SqlLedger
    rating: Rating
    store: TenantStore


def with_usage(
    config_path: Path | None, action: Callable[[UsageContext], Awaitable[T]], policy: str | None = None
) -> T:
    """Open the ledger (`metering.ledger_url`, else `database.url`, migrated) and tenant store; run `action`.

    Rating uses `policy`, by default the one budgets are charged with (`prices.policy`)."""
    config = load(config_path)
    policy = policy or config.prices.policy
    url = config.metering.ledger_url or config.database.url

    async def run() -> T:
        ledger = await SqlLedger.open(url)
        shared = url == config.database.url
        try:
            store = TenantStore(ledger.engine) if shared else await TenantStore.open(config.database.url)
            try:
                rating = Rating(ledger.engine, policy=policy, tenant_names=store.external_ids)
                return await action(UsageContext(config, ledger, rating, store))
            finally:
                if not shared:
                    await store.close()
        finally:
            await ledger.close()

    return run_on_database(run(), "ledger", url)


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{name}: expected a date like 2026-11-01, got {value!r}")


def _print_report(report: UsageReport, as_json: bool, as_csv: bool) -> None:
    if as_json:
        print_json(report.model_dump(mode="json"))
    elif as_csv:
        _print_csv(report)
    else:
        _print_table(report)


def _print_csv(report: UsageReport) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, "currency"])
    for line in report.lines:
        data = line.model_dump(mode="json")
        writer.writerow([*("" if data[c] is None else data[c] for c in CSV_COLUMNS), report.currency or ""])


def _counts(x: UsageTotals) -> list[str]:
    return [str(x.requests), str(x.fresh_tokens), str(x.cached_tokens), str(x.output_tokens)]


def _print_table(report: UsageReport) -> None:
    table = Table("day", "tenant", "model")
    for header in ("requests", "fresh", "cached", "output", f"charge {report.currency or '-'}", "cost", "margin"):
        table.add_column(header, justify="right")
    for x in report.lines:
        charge = f"{x.charge} (unpriced)" if x.unpriced_requests else x.charge
        table.add_row(x.day.isoformat(), x.tenant, x.model, *_counts(x), charge, x.cost, x.margin)
    t = report.totals
    table.add_row("total", "", "", *_counts(t), t.charge, t.cost, t.margin, style="bold")
    period = f"{report.since or 'start'} .. {report.until or 'today'}"
    rated = f"price book v{report.price_book_version}" if report.price_book_version else "price book in force"
    table.caption = f"{period}, {rated}, policy {report.policy}"
    console.print(table)
    if t.unpriced_requests:
        err_console.print(
            f"[yellow]{t.unpriced_requests} requests had no price[/]: add them to a price book "
            "(`fleetgate usage prices set -f prices.yaml`)"
        )


SinceOpt = typer.Option(None, "--since", help="first UTC day (YYYY-MM-DD; default: first of this month)")
UntilOpt = typer.Option(None, "--until", help="last UTC day, inclusive (default: today)")
TenantOpt = typer.Option(None, "--tenant", help="only this tenant (external id)")
BookOpt = typer.Option(None, "--price-book", help="re-rate the whole period with this price book version")
PolicyOpt = typer.Option(
    None, "--policy", help="rating policy (per_token | no_cache_discount; default: prices.policy, as budgets)"
)
CsvOpt = typer.Option(False, "--csv", help="CSV on stdout")


def report(
    ctx: typer.Context,
    since: str | None = SinceOpt,
    until: str | None = UntilOpt,
    tenant: str | None = TenantOpt,
    price_book: int | None = BookOpt,
    policy: str | None = PolicyOpt,
    as_json: bool = JsonOption,
    as_csv: bool = CsvOpt,
    config_path: Path | None = ConfigOption,
) -> None:
    """Usage per tenant, model and day with charge, cost and margin (`usage` alone is `usage report`)."""
    if ctx.invoked_subcommand is not None:  # `usage prices ...`, `usage reconcile`: this ran as the group's callback
        return
    today = datetime.now(UTC).date()
    start = _day(since, "--since") or today.replace(day=1)
    end = _day(until, "--until") or today

    async def run(usage: UsageContext) -> UsageReport:
        tenant_id = await usage.rating.tenant_id(tenant) if tenant else None
        return await usage_report(
            usage.ledger, usage.rating, since=start, until=end, tenant_id=tenant_id, version=price_book
        )

    _print_report(with_usage(config_path, run, policy), as_json, as_csv)


app.callback(invoke_without_command=True)(report)
app.command("report")(report)


def _load_spec(path: Path, note: str | None) -> PriceBookSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {path}: {exc}")
    if not isinstance(data, dict):
        fail(f"{path} must hold a mapping (currency, prices, tenant_overrides, gpu_costs, note)")
    if note is not None:
        data["note"] = note
    try:
        return PriceBookSpec.model_validate(data)
    except ValidationError as exc:
        fail("invalid price book: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


def _in_force_from(value: str | None, refresh_interval: float) -> datetime:
    # Never sooner than every gateway can hold it: a book that applied before a gateway read it would make that
    # gateway's budget counter charge the old prices for usage the invoice rates with the new ones.
    earliest = datetime.now(UTC) + timedelta(seconds=lead_time(refresh_interval))
    if value is None:
        return earliest
    when = datetime.fromtimestamp(_since(value) or 0.0, UTC)
    if when < datetime.now(UTC):
        fail(
            f"--from {value} is in the past: a book applies from now on (budgets already charged the past); "
            "re-rate a past period with `fleetgate usage --price-book N` instead"
        )
    return max(when, earliest)


@prices_app.command("set")
def set_prices(
    file: Path = typer.Option(..., "--file", "-f", help="price book YAML (see prices.example.yaml)"),
    note: str | None = typer.Option(None, "--note", help="why the prices changed (overrides the file's note)"),
    start: str | None = typer.Option(
        None, "--from", help="when it comes into force (ISO time or Unix seconds; default: in a few seconds)"
    ),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Store a new price book version from a YAML file (earlier versions stay, for re-rating)."""
    spec = _load_spec(file, note)
    when = _in_force_from(start, load(config_path).prices.refresh_interval)

    async def run(ctx: UsageContext) -> tuple[PriceBook, list[str]]:
        known = {t.external_id for t in await ctx.store.list_tenants(include_deleted=True)}
        return await ctx.rating.create_book(spec, in_force_from=when), sorted(set(spec.tenant_overrides) - known)

    book, unknown = with_usage(config_path, run)
    if unknown:
        err_console.print(f"[yellow]warning:[/] overrides for unknown tenants: {', '.join(unknown)}")
    if as_json:
        print_json(book.to_json())
    else:
        console.print(
            f"price book v{book.version} stored ({len(book.prices)} models, {book.currency}),"
            f" in force from {book.created_at.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        )


@prices_app.command("list")
def list_prices(config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every price book version, oldest first."""
    books = with_usage(config_path, lambda ctx: ctx.rating.books())
    if as_json:
        print_json([b.to_json() for b in books])
        return
    table = Table("version", "in force from (UTC)", "currency", "models", "tenant overrides", "gpu costs", "note")
    for b in books:
        table.add_row(
            str(b.version),
            b.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            b.currency,
            ", ".join(sorted(b.prices)),
            ", ".join(sorted(b.tenant_overrides)) or "-",
            ", ".join(sorted(b.gpu_costs)) or "-",
            b.note or "",
        )
    console.print(table)


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--since: expected an ISO time (2026-11-23T10:00:00) or Unix seconds, got {value!r}")
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@app.command("reconcile")
def reconcile_cmd(
    since: str | None = typer.Option(None, "--since", help="compare from this time (default: each replica's start)"),
    max_drift: int | None = typer.Option(None, "--max-drift", help="exit 1 if any drift exceeds this many tokens"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Compare the ledger's tokens per replica with the engines' own counters (drift = engine - ledger)."""
    config = load(config_path)
    run_dir = run_dir_for(config)
    state = run_dir.read()
    if state is None:
        fail(f"nothing runs from {run_dir.path}: start the stack with `fleetgate up`")
    targets, skipped = replica_targets(state, config.engines, _since(since))
    drifts: list[Drift] = with_usage(config_path, lambda ctx: reconcile(ctx.ledger, targets)) if targets else []
    if as_json:
        print_json({"replicas": [d.to_json() for d in drifts], "skipped": skipped})
    else:
        _print_drifts(drifts, skipped)
    if max_drift is not None and any(not d.within(max_drift) for d in drifts):
        raise typer.Exit(1)


def _print_drifts(drifts: list[Drift], skipped: list[str]) -> None:
    table = Table("replica", "kind", "since (UTC)")
    for header in ("requests", "prompt: ledger", "engine", "drift", "output: ledger", "engine", "drift"):
        table.add_column(header, justify="right")
    for d in drifts:
        start = "-" if d.since is None else datetime.fromtimestamp(d.since, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if d.error:
            table.add_row(d.replica_id, d.kind, start, f"[red]{d.error}[/]")
            continue
        table.add_row(
            d.replica_id,
            d.kind,
            start,
            str(d.requests),
            f"{d.ledger_prompt} ({d.basis})",
            str(d.engine_prompt),
            f"{d.prompt_drift:+d}",
            str(d.ledger_completion),
            str(d.engine_completion),
            f"{d.completion_drift:+d}",
        )
    console.print(table)
    for line in skipped:
        err_console.print(f"[yellow]skipped[/] {line}")
