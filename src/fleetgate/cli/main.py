"""The `fleetgate` command: one small module per command group."""

from __future__ import annotations

import typer

from fleetgate.cli import adapters, apply, engine, keys, sim, simulate, stack, tenants, top, usage

app = typer.Typer(
    name="fleetgate",
    help="Control plane and tenant plane for self-hosted LLM serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack.register(app)
apply.register(app)
sim.register(app)
simulate.register(app)
top.register(app)
app.add_typer(engine.app, name="engine")
app.add_typer(tenants.app, name="tenants")
app.add_typer(keys.app, name="keys")
app.add_typer(usage.app, name="usage")
app.add_typer(adapters.app, name="adapters")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
