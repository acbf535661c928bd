"""`fleetgate top`: a live terminal view of the fleet and the tenants, from a gateway's dashboard API.

It reads `GET /dashboard/api/overview` with the admin key, so it works against any gateway it can reach
(`--url`), local or remote, and shows the same numbers as the web dashboard.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetgate.cli.common import ConfigOption, JsonOption, console, fail, load, print_json
from fleetgate.tenancy.bootstrap_keys import shown_keys

OVERVIEW = "/dashboard/api/overview"
DASH = "-"


class TopError(Exception):
    """The gateway could not be read (unreachable, wrong key, unexpected answer)."""


def fetch_overview(url: str, admin_key: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET the overview JSON from a gateway."""
    if not url.startswith(("http://", "https://")):
        raise TopError(f"--url must start with http:// or https://, got {url!r}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above (no file:// or ftp://)
        url.rstrip("/") + OVERVIEW, headers={"Authorization": f"Bearer {admin_key}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise TopError(f"{url}: HTTP {exc.code}: {_error_message(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise TopError(f"{url}: cannot connect ({reason})") from None
    except ValueError as exc:
        raise TopError(f"{url}: not a JSON answer ({exc})") from None
    if not isinstance(body, dict) or body.get("object") != "dashboard.overview":
        raise TopError(f"{url}{OVERVIEW} did not answer with a dashboard overview: is it a fleetgate gateway?")
    return body


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason or "no detail"


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{float(value):,.{digits}f}"


def _pct(value: Any) -> str:
    return DASH if value is None else f"{100 * float(value):.1f}%"


def _secs(value: Any) -> str:
    if value is None:
        return DASH
    v = float(value)
    return f"{1000 * v:.0f} ms" if v < 1 else f"{v:.2f} s"


def _last(values: list[Any]) -> Any:
    return next((v for v in reversed(values) if v is not None), None)


def render(overview: dict[str, Any]) -> RenderableType:
    """One frame: a summary line, the replicas table and the tenants table."""
    fleet = overview.get("fleet") or []
    parts: list[RenderableType] = [_summary(overview, fleet), _replicas(fleet), _tenants(overview)]
    if overview.get("usage_error"):
        parts.append(Text(f"usage: {overview['usage_error']}", "yellow"))
    return Group(*parts)


def _summary(overview: dict[str, Any], fleet: list[dict[str, Any]]) -> Text:
    now = overview.get("now") or {}
    series = overview.get("series") or {}
    at = datetime.fromtimestamp(float(overview.get("generated_at") or 0), UTC).strftime("%H:%M:%S UTC")
    healthy = sum(1 for r in fleet if r.get("healthy"))
    return Text.assemble(
        ("fleetgate top ", "bold"),
        (f"{at}  ", "dim"),
        f"replicas {healthy}/{len(fleet)} healthy  ",
        f"in flight {_num(now.get('in_flight'))}  ",
        f"queued {_num(now.get('queue_depth'))}  ",
        f"req/s {_num(now.get('requests_per_s'), 2)}  ",
        f"out tok/s {_num(now.get('output_tokens_per_s'), 1)}  ",
        f"TTFT p50 {_secs(_last(series.get('ttft_p50') or []))} p99 {_secs(_last(series.get('ttft_p99') or []))}",
    )


def _replicas(fleet: list[dict[str, Any]]) -> Table:
    table = Table(title="replicas", title_justify="left", expand=True)
    table.add_column("replica")
    table.add_column("models")
    table.add_column("health")
    for header in ("in flight", "queue", "KV", "cache hit", "tokens/s"):
        table.add_column(header, justify="right")
    for r in fleet:
        table.add_row(
            str(r.get("id")),
            ", ".join(r.get("models") or []) or DASH,
            Text("healthy", "green") if r.get("healthy") else Text("down", "red"),
            _num(r.get("in_flight")),
            _num(r.get("queue")),
            _pct(r.get("kv")),
            _pct(r.get("cache_hit")),
            _num(r.get("tokens_per_s"), 1),
        )
    return table


def _tenants(overview: dict[str, Any]) -> Table:
    currency = overview.get("currency")
    table = Table(title="tenants", title_justify="left", expand=True)
    table.add_column("tenant")
    for header in ("req/s", "in tok/s", "out tok/s", "throttles 15m", f"spend today {currency or ''}".strip()):
        table.add_column(header, justify="right")
    for x in overview.get("tenants") or []:
        throttles = int(x.get("throttles") or 0)
        table.add_row(
            str(x.get("tenant")),
            _num(x.get("requests_per_s"), 2),
            _num(x.get("input_tokens_per_s"), 1),
            _num(x.get("output_tokens_per_s"), 1),
            Text(str(throttles), "yellow" if throttles else ""),
            str(x.get("spend_today") or DASH),
        )
    return table


def _error_frame(message: str) -> RenderableType:
    return Text.assemble(("fleetgate top ", "bold"), (message, "red"), ("  (retrying)", "dim"))


def _default_url(host: str, port: int) -> str:
    # A gateway bound to every interface is still reached on loopback from this machine.
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{reach}]:{port}" if ":" in reach else f"http://{reach}:{port}"


def run_live(url: str, admin_key: str, interval: float, out: Console, frames: int | None = None) -> None:
    """Refresh a Rich Live view every `interval` seconds (forever unless `frames` is given)."""
    shown = 0
    with Live(console=out, auto_refresh=False, screen=False) as live:
        while frames is None or shown < frames:
            started = time.monotonic()
            try:
                frame = render(fetch_overview(url, admin_key, timeout=max(interval, 2.0)))
            except TopError as exc:
                frame = _error_frame(str(exc))
            live.update(frame, refresh=True)
            shown += 1
            if frames is None or shown < frames:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))


def top(
    url: str | None = typer.Option(None, "--url", help="gateway base URL (default: gateway.host/port from config)"),
    admin_key: str | None = typer.Option(
        None,
        "--admin-key",
        envvar="FLEETGATE_ADMIN_KEY",
        help="admin key (default: gateway.admin_api_key, or the generated one in the state dir's keys.json)",
    ),
    interval: float = typer.Option(1.0, "--interval", min=0.2, help="seconds between refreshes"),
    once: bool = typer.Option(False, "--once", help="render one frame and exit"),
    as_json: bool = JsonOption,
    config_path: Path | None = ConfigOption,
) -> None:
    """Live view of replicas (health, in flight, queue, KV, cache hits, tokens/s) and tenants (rates, spend)."""
    if url is None or admin_key is None:
        config = load(config_path)
        url = url or _default_url(config.gateway.host, config.gateway.port)
        keys = shown_keys(config)  # never generates: a key nobody started a gateway with would open nothing
        admin_key = admin_key or keys["admin_api_key"]
        if not admin_key and keys["key_file_error"]:
            fail(keys["key_file_error"])
    if not admin_key:
        fail(
            "no admin key: pass --admin-key, set gateway.admin_api_key in the config, or start the gateway once"
            " (`fleetgate up` generates one)"
        )
    if as_json or once:
        try:
            overview = fetch_overview(url, admin_key)
        except TopError as exc:
            fail(str(exc))
        if as_json:
            print_json(overview)
        else:
            console.print(render(overview))
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves `top`: no traceback
        run_live(url, admin_key, interval, console)


def register(app: typer.Typer) -> None:
    """Add the `top` command to the fleetgate CLI."""
    app.command("top")(top)
