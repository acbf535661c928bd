"""`fleetgate up|down|status`: bring the local stack up, stop it, and show what runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import typer
from rich.panel import Panel
from rich.table import Table

from fleetgate.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    load,
    print_json,
    run_async,
    run_dir_for,
    setup_logging,
)
from fleetgate.cli.engine import ensure_engine, ensure_vllm
from fleetgate.config import Config, EngineEndpoint
from fleetgate.domain.errors import FleetgateError
from fleetgate.domain.paths import open_private_log, private_dir
from fleetgate.local.launcher import LlamaCppLauncher, ReplicaLauncher
from fleetgate.local.model import resolve_model
from fleetgate.local.rundir import RunState, stop_recorded
from fleetgate.local.vllm_launcher import VllmLauncher, ensure_hf_model
from fleetgate.tenancy.bootstrap_keys import check_public_bind, key_file_path, resolve_keys, shown_keys


def _apply_cli(
    config: Config,
    host: str | None,
    port: int | None,
    replicas: int | None,
    engines: list[str],
    local: str | None = None,
) -> Config:
    try:
        if host is not None:
            config.gateway.host = host
        if port is not None:
            config.gateway.port = port
        if engines:
            config.engines = [EngineEndpoint(url=u, id=f"engine-{i}") for i, u in enumerate(engines)]
        if local == "vllm":
            # The local fleet's engine kind: all local replicas become vLLM ones.
            config.local.vllm.replicas = replicas if replicas is not None else (config.local.vllm.replicas or 2)
            config.local.replicas = 0
        elif local == "llamacpp":
            config.local.vllm.replicas = 0
            if replicas is not None:
                config.local.replicas = replicas
        elif local is not None:
            fail(f"--local must be llamacpp or vllm, not {local!r}")
        elif replicas is not None:
            config.local.replicas = replicas
        elif config.engines:
            config.local.replicas = 0  # remote engines named: no local fleet unless asked for
            config.local.vllm.replicas = 0
    except ValueError as exc:
        fail(f"invalid option: {exc}")
    return config


def _launchers(config: Config, quiet: bool) -> tuple[list[ReplicaLauncher], Path | None, Path | None]:
    """The local replicas to start (llama.cpp, vLLM or both), preparing engines and models they need."""
    launchers: list[ReplicaLauncher] = []
    binary = model = None
    try:
        if config.local.replicas > 0 or (config.local.vllm.replicas > 0 and config.local.vllm.model_dir is None):
            model = resolve_model(config.local.model_path)
        if config.local.replicas > 0:
            binary = ensure_engine(config, quiet=quiet)
            assert model is not None
            launchers.append(LlamaCppLauncher(config.local, binary, model))
        if config.local.vllm.replicas > 0:
            env = ensure_vllm(quiet=quiet)
            model_dir = config.local.vllm.model_dir
            if model_dir is None:
                assert model is not None
                if not quiet:
                    console.print(f"Preparing {model.name} for vLLM (converted once, then cached)")
                model_dir = ensure_hf_model(env, model, config.local.vllm.dtype)
            launchers.append(VllmLauncher(config.local, env, model_dir))
    except FleetgateError as exc:
        fail(str(exc))
    return launchers, binary, model


NO_DEMO_KEY = "<a key from `fleetgate keys create <tenant>`>"


def banner(state: RunState, config: Config) -> str:
    """The short summary in the banner's box (nothing in it is longer than a narrow terminal)."""
    replicas = len(state.replicas) or len(state.engines)
    return (
        f"Gateway: {state.gateway_url or ''}   replicas: {replicas}\n"
        f"Demo tenant: {config.tenancy.demo_tenant}   dashboard: {state.gateway_url or ''}/dashboard"
    )


def key_lines(state: RunState, key: str, config: Config) -> list[str]:
    """The keys and a curl line: printed unwrapped and uncropped, so each can be copied whole from any output."""
    url = state.gateway_url or ""
    model = state.model_alias or "<model>"
    admin = config.gateway.admin_api_key or "(admin API disabled)"
    return [
        f"Demo API key: {key}",
        f"Admin key (for /admin, /metrics, `fleetgate top`): {admin}",
        f"Both are kept in {key_file_path()} (readable by you only); `fleetgate status` shows them again.",
        "",
        f"curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f"""-d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}'""",
    ]


def sdk_snippet(state: RunState, key: str) -> str:
    """A ready-to-paste OpenAI SDK example."""
    return (
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{state.gateway_url}/v1", api_key="{key}")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{state.model_alias or "<model>"}",\n'
        '    messages=[{"role": "user", "content": "Say hello"}],\n'
        "    max_tokens=32,\n"
        ")\n"
        "print(reply.choices[0].message.content)"
    )


def print_banner(state: RunState, key: str, config: Config, title: str) -> None:
    """The banner: a box with the gateway, then keys, curl and SDK lines as plain text (never wrapped or cut)."""
    console.print(Panel(banner(state, config), title=title, border_style="green", expand=False))
    for line in [*key_lines(state, key, config), "", *sdk_snippet(state, key).splitlines()]:
        console.print(line, soft_wrap=True, crop=False, highlight=False, markup=False)


async def _self_test(state: RunState, key: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(
            f"{state.gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        data = await resp.json()
        if resp.status != 200:
            return f"self-test request failed ({resp.status}): {data}"
        text = data["choices"][0]["message"]["content"].strip().replace("\n", " ")
        replica = resp.headers.get("x-fleetgate-replica")  # sent only with gateway.expose_route_headers
        where = f" on {replica}" if replica else ""
        return f"self-test: {model}{where} answered {text!r} ({data['usage']['completion_tokens']} tokens)"


def up(
    config_path: Path | None = ConfigOption,
    host: str | None = typer.Option(None, help="gateway listen address (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="gateway port (default 8080; 0 = any free port)"),
    replicas: int | None = typer.Option(None, "--replicas", "-n", help="local llama-server replicas (default 2)"),
    engine: list[str] = typer.Option([], "--engine", "-e", help="URL of an OpenAI-compatible engine (repeatable)"),
    local: str | None = typer.Option(None, "--local", help="local fleet engine: llamacpp (default) or vllm"),
    detach: bool = typer.Option(False, "--detach", "-d", help="run in the background and return once ready"),
    self_test: bool = typer.Option(True, help="send one real request through the gateway once it is up"),
    as_json: bool = JsonOption,
) -> None:
    """Build the engine if needed, start local replicas and the gateway, serve until Ctrl-C or `fleetgate down`."""
    config = _apply_cli(load(config_path), host, port, replicas, engine, local)
    from fleetgate.local.stack import check_not_running, run_stack  # the whole gateway: only `up` needs it

    run_dir = run_dir_for(config)
    try:
        check_not_running(run_dir)
        check_public_bind(config.gateway)
        resolve_keys(config)  # generated once; the banner shows them, a detached child reads the same file
    except (FleetgateError, OSError) as exc:
        fail(str(exc))
    if not config.local.replicas and not config.local.vllm.replicas and not config.engines:
        fail("nothing to serve: no local replicas (--replicas 0) and no --engine URL")
    launchers, binary, model = _launchers(config, as_json)
    if detach:
        _detach(config_path, host, port, replicas, engine, local, self_test, as_json, config)
        return
    key = config.gateway.demo_api_key or NO_DEMO_KEY

    async def on_ready(state: RunState) -> None:
        if as_json:
            print_json({**state.to_json(), **_keys_json(config)})
        else:
            print_banner(state, key, config, "fleetgate is up")
        if self_test and state.model_alias and config.gateway.demo_api_key:
            try:
                line = await _self_test(state, key, state.model_alias)
                console.print(line, soft_wrap=True, crop=False, highlight=False, markup=False)  # one line, as answered
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                console.print(f"[yellow]self-test request failed: {exc}[/]")
        if not as_json:
            console.print("Ctrl-C or `fleetgate down` stops everything.")

    setup_logging()
    try:
        run_async(run_stack(config, run_dir, launchers=launchers, binary=binary, model=model, on_ready=on_ready))
    except FleetgateError as exc:
        fail(str(exc))


def _detach(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    replicas: int | None,
    engine: list[str],
    local: str | None,
    self_test: bool,
    as_json: bool,
    config: Config,
) -> None:
    args = [sys.executable, "-m", "fleetgate.cli.main", "up"]
    if config_path is not None:
        args += ["--config", str(config_path)]
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    if replicas is not None:
        args += ["--replicas", str(replicas)]
    for url in engine:
        args += ["--engine", url]
    if local is not None:
        args += ["--local", local]
    args.append("--self-test" if self_test else "--no-self-test")
    run_dir = run_dir_for(config)
    log_path = run_dir.log_file("up")
    private_dir(run_dir.path, tighten_existing=True)
    # The child prints the banner, keys included, into this log: readable by this user only.
    with os.fdopen(open_private_log(log_path), "ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + max(config.local.start_timeout, config.local.vllm.start_timeout) + 60
    while time.monotonic() < deadline:
        state = run_dir.read()
        if state is not None and state.status == "ready" and state.supervisor and state.supervisor.pid == proc.pid:
            if as_json:
                print_json({**state.to_json(), **_keys_json(config), "log": str(log_path)})
            else:
                print_banner(state, config.gateway.demo_api_key or NO_DEMO_KEY, config, "fleetgate is up (detached)")
                console.print(f"Logs: {log_path}. Stop with `fleetgate down`.", soft_wrap=True, highlight=False)
            return
        if proc.poll() is not None:
            fail(f"`fleetgate up` exited with code {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
        time.sleep(0.2)
    proc.terminate()
    fail(f"the stack was not ready in time; see {log_path}")


def _keys_json(config: Config) -> dict[str, Any]:
    return {
        "demo_api_key": config.gateway.demo_api_key,
        "admin_api_key": config.gateway.admin_api_key,
        "key_file": str(key_file_path()),
    }


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def down(config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Stop everything `up` started (by recorded PID), also after a crash of the gateway or a replica."""
    run_dir = run_dir_for(load(config_path))
    state = run_dir.read()
    if state is None:
        if as_json:
            print_json({"stopped": [], "running": False})
        else:
            console.print("nothing is running")
        return
    stopped = stop_recorded(state)
    run_dir.clear()
    if as_json:
        print_json({"stopped": stopped, "running": False})
    else:
        console.print(f"stopped {len(stopped)} process(es): {', '.join(map(str, stopped)) or '-'}")


def _probe(url: str, timeout: float = 1.5) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - 127.0.0.1 URLs from our state
            return resp.status == 200, f"{resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code}"
    except (OSError, ValueError) as exc:
        return False, type(exc).__name__


def status_data(state: RunState | None) -> dict[str, Any]:
    """What runs, probed live: gateway health and each replica's /health."""
    if state is None:
        return {"running": False}
    gateway_ok, gateway_detail = _probe(f"{state.gateway_url}/healthz") if state.gateway_url else (False, "starting")
    replicas = []
    for record in state.replicas:
        healthy, detail = _probe(f"{record.url}/health") if record.url else (False, "-")
        replicas.append(
            {
                "id": record.id,
                "pid": record.pid,
                "url": record.url,
                "alive": record.alive(),
                "healthy": healthy,
                "health": detail,
            }
        )
    for url in state.engines:
        healthy, detail = _probe(f"{url}/v1/models")
        replicas.append({"id": url, "pid": None, "url": url, "alive": None, "healthy": healthy, "health": detail})
    return {
        "running": bool(state.supervisor and state.supervisor.alive()),
        "status": state.status,
        "pid": state.supervisor.pid if state.supervisor else None,
        "gateway_url": state.gateway_url,
        "gateway_healthy": gateway_ok,
        "gateway_health": gateway_detail,
        "engine_binary": state.binary,
        "model": state.model,
        "model_alias": state.model_alias,
        "replicas": replicas,
    }


def status(config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Show the gateway, the replicas with their health, the engine binary and the model (exit 1 if not running)."""
    config = load(config_path)
    data = status_data(run_dir_for(config).read())
    # The keys in force: from config, or from the key file if this user may read it (its owner, 0600).
    data["keys"] = shown_keys(config)
    if as_json:
        print_json(data)
    elif not data["running"]:
        console.print("fleetgate is not running (start it with `fleetgate up`)")
    else:
        console.print(
            f"gateway {data['gateway_url']} ({'healthy' if data['gateway_healthy'] else data['gateway_health']}),"
            f" pid {data['pid']}, {data['status']}",
            highlight=False,
        )
        console.print(f"engine {data['engine_binary'] or 'remote'}; model {data['model'] or '-'}", highlight=False)
        table = Table("replica", "url", "pid", "health")
        for r in data["replicas"]:
            table.add_row(
                str(r["id"]),
                str(r["url"]),
                str(r["pid"] or "-"),
                "[green]healthy[/]" if r["healthy"] else f"[red]{r['health']}[/]",
            )
        console.print(table)
        _print_keys(data["keys"])
    if not data["running"]:
        raise typer.Exit(1)


def _print_keys(keys: dict[str, Any]) -> None:
    if keys["key_file_error"]:
        console.print(f"keys: {keys['key_file_error']}", soft_wrap=True, highlight=False, markup=False)
    for label, name in (("demo API key", "demo_api_key"), ("admin key", "admin_api_key")):
        value = keys[name] or "(none; not generated yet or disabled)"
        console.print(f"{label}: {value}", soft_wrap=True, crop=False, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add the stack commands to the root CLI."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
