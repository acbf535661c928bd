"""`fleetgate simulate`: replay a workload through N simulated replicas offline, one run per routing policy."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from fleetgate.sim.report import PolicyReport

PROFILE_HELP = "shipped profile name (h100-llama3-8b, smollm2-llamacpp-local) or a YAML file"
DEFAULT_POLICIES = "round_robin,least_load,prefix,score"


def _range(text: str, name: str) -> tuple[int, int]:
    """`400-1200` or `300` (both ends)."""
    low, _, high = text.partition("-")
    try:
        pair = (int(low), int(high or low))
    except ValueError:
        raise typer.BadParameter(f"expected N or MIN-MAX, got {text!r}", param_hint=name) from None
    if not 1 <= pair[0] <= pair[1]:
        raise typer.BadParameter("need 1 <= MIN <= MAX", param_hint=name)
    return pair


def simulate(
    replicas: int = typer.Option(8, "--replicas", "-n", min=1, help="simulated replicas"),
    profile: str = typer.Option("h100-llama3-8b", "--profile", help=PROFILE_HELP),
    policies: str = typer.Option(DEFAULT_POLICIES, "--policies", help="comma-separated routing policies to compare"),
    trace: Path | None = typer.Option(None, "--trace", help="JSON-lines trace to replay instead of the generator"),
    requests: int = typer.Option(2000, "--requests", min=0, help="generated requests"),
    rate: float = typer.Option(20.0, "--rate", min=1e-6, help="generated arrivals per second (Poisson)"),
    tenants: int = typer.Option(4, "--tenants", min=1, help="generated tenants"),
    tenant_skew: float = typer.Option(1.0, "--tenant-skew", min=0, help="Zipf exponent of tenant traffic shares"),
    system_prompts: int = typer.Option(2, "--system-prompts", min=1, help="shared system prompts per tenant"),
    system_tokens: str = typer.Option("400-1200", "--system-tokens", help="system prompt length, tokens"),
    user_tokens: str = typer.Option("20-200", "--user-tokens", help="user message length, tokens"),
    reply_tokens: str = typer.Option("32-256", "--reply-tokens", help="answer length, tokens"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="max_tokens of generated requests"),
    turns: float = typer.Option(4.0, "--turns", min=1, help="mean turns per conversation"),
    think_time: float = typer.Option(5.0, "--think-time", min=0, help="seconds at least between turns"),
    seed: int = typer.Option(0, "--seed", help="workload and tie-break seed"),
    scrape_interval: float = typer.Option(1.0, "--scrape-interval", min=0.001, help="seconds between scrapes"),
    admission: bool = typer.Option(True, "--admission/--no-admission", help="gateway queue and capacity rule"),
    max_in_flight: int | None = typer.Option(
        None, "--max-in-flight-per-replica", min=1, help="admission allowance per replica (default: config's)"
    ),
    config_path: Path | None = typer.Option(None, "--config", "-c", help="take routing params and admission from it"),
    router_params_json: str | None = typer.Option(
        None, "--router-params", help="routing parameters as JSON, over the config's: '{\"imbalance_abs\": 8}'"
    ),
    kv_blocks: int | None = typer.Option(None, "--kv-blocks", min=1, help="override the profile's KV blocks"),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", min=1, help="override sequences per batch"),
    plot_path: Path | None = typer.Option(None, "--plot", help="write a PNG comparing the policies"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Simulate a fleet offline (simulated time): the gateway's router and admission over engine models."""
    # imported here so `fleetgate --help` stays fast
    from fleetgate.cli.common import fail, load
    from fleetgate.config import AdmissionConfig
    from fleetgate.domain.errors import ConfigError
    from fleetgate.sim.profiles import load_profile
    from fleetgate.sim.scenario import Comparison, gateway_admission, policy_names, read_trace, router_params
    from fleetgate.sim.workload import ChatWorkload, SimRequest

    try:
        names = policy_names(policies)
        config = load(config_path) if config_path is not None else None
        prof = load_profile(profile).with_overrides(kv_blocks=kv_blocks, max_num_seqs=max_num_seqs)
        workload: Iterable[SimRequest]
        if trace is not None:
            workload = read_trace(trace, max_tokens, prof, seed)
        else:  # re-iterable: the same seeded arrivals for every policy
            workload = ChatWorkload(
                requests=requests,
                rate=rate,
                tenants=tenants,
                tenant_skew=tenant_skew,
                system_prompts=system_prompts,
                system_tokens=_range(system_tokens, "--system-tokens"),
                user_tokens=_range(user_tokens, "--user-tokens"),
                reply_tokens=_range(reply_tokens, "--reply-tokens"),
                max_tokens=max_tokens,
                turns=turns,
                think_time=think_time,
                max_context=prof.max_model_len,
                seed=seed,
            )
        comparison = Comparison(
            prof,
            replicas,
            names,
            router_params(config.routing.params if config else {}, router_params_json),
            gateway_admission(config.admission if config else AdmissionConfig(), admission, max_in_flight),
            scrape_interval,
            seed,
        )
        reports = comparison.run(workload)
    except ConfigError as exc:
        fail(str(exc), 2)
    source = f"trace {trace}" if trace is not None else f"{requests} generated requests at {rate:g}/s"
    _render(reports, {"replicas": replicas, "profile": prof.name}, source, plot_path, as_json)


def _render(
    reports: list[PolicyReport], fleet: dict[str, Any], source: str, plot_path: Path | None, as_json: bool
) -> None:
    from fleetgate.cli.common import console, print_json
    from fleetgate.sim.report import plot

    title = f"{fleet['replicas']} x {fleet['profile']}, {source}"
    if plot_path is not None:
        plot(reports, plot_path, title)
    if as_json:
        print_json(
            {
                "fleet": fleet,
                "workload": source,
                "plot": str(plot_path) if plot_path else None,
                "policies": [r.to_json() for r in reports],
            }
        )
        return
    _print_table(console, title, reports)
    if plot_path is not None:
        console.print(f"plot: {plot_path}")


def _print_table(console: Console, title: str, reports: list[PolicyReport]) -> None:
    from rich.table import Table

    from fleetgate.sim.report import table_rows

    headers, rows = table_rows(reports)
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the `simulate` command to the fleetgate CLI."""
    app.command("simulate")(simulate)
