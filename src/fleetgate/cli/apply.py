"""`fleetgate apply -f tenants.yaml`: make the tenants match the operator's file (idempotent)."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from pydantic import ValidationError

from fleetgate.cli.common import ConfigOption, JsonOption, console, fail, print_json
from fleetgate.cli.store import with_store
from fleetgate.tenancy.models import TenantSpec


def load_specs(path: Path) -> list[TenantSpec]:
    """Read `tenants: [...]` from a YAML file, naming the bad entry and field on error."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {path}: {exc}")
    items = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(items, list):
        fail(f"{path}: expected a top-level `tenants:` list")
    specs: list[TenantSpec] = []
    for index, item in enumerate(items):
        try:
            specs.append(TenantSpec.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            fail(f"{path}: tenants[{index}]: {problems}")
    ids = [s.external_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        fail(f"{path}: duplicate external_id {', '.join(duplicates)}")
    return specs


def apply(
    file: Path = typer.Option(..., "--file", "-f", help="YAML with a `tenants:` list"),
    prune: bool = typer.Option(True, help="suspend tenants that are not in the file (never deletes)"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Upsert every tenant in the file; suspend the ones it no longer lists. Applying twice changes nothing."""
    specs = load_specs(file)
    report = with_store(config_path, lambda store: store.apply(specs, prune=prune))
    if as_json:
        print_json(
            {
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "suspended": report.suspended,
                "changed": report.changed,
            }
        )
        return
    for label, ids in (
        ("created", report.created),
        ("updated", report.updated),
        ("suspended", report.suspended),
    ):
        if ids:
            console.print(f"{label}: {', '.join(ids)}")
    console.print(f"unchanged: {len(report.unchanged)}" if report.changed else "no changes")


def register(app: typer.Typer) -> None:
    """Add `apply` to the root CLI."""
    app.command()(apply)
