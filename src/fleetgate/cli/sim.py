"""`fleetgate sim-engine`: one simulated vLLM replica (real HTTP on 127.0.0.1, modelled engine inside)."""

from __future__ import annotations

import logging

import typer

PROFILE_HELP = "shipped profile name (h100-llama3-8b, smollm2-llamacpp-local) or a YAML file"


def sim_engine(
    port: int = typer.Option(8100, "--port", help="TCP port"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address"),
    profile: str = typer.Option("smollm2-llamacpp-local", "--profile", help=PROFILE_HELP),
    model: str = typer.Option("smollm2", "--model", help="served model name"),
    kv_blocks: int | None = typer.Option(None, "--kv-blocks", min=1, help="KV cache blocks (profile default)"),
    block_size: int | None = typer.Option(None, "--block-size", min=1, help="tokens per KV block"),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", min=1, help="sequences per batch"),
    max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens", min=1, help="tokens/step"),
    max_model_len: int | None = typer.Option(None, "--max-model-len", min=16, help="context length"),
    max_loras: int | None = typer.Option(None, "--max-loras", min=0, help="adapters per batch (0: LoRA off)"),
    max_cpu_loras: int | None = typer.Option(None, "--max-cpu-loras", min=1, help="resident adapters"),
    cold_load_s: float | None = typer.Option(None, "--cold-load-s", min=0, help="model load time (model seconds)"),
    seed: int = typer.Option(0, "--seed", help="seed of the fault dice"),
    time_scale: float = typer.Option(1.0, "--time-scale", min=1e-6, help="divide every delay by this"),
    prompt_tokens_details: bool = typer.Option(
        True, "--prompt-tokens-details/--no-prompt-tokens-details", help="vLLM's --enable-prompt-tokens-details"
    ),
    fault_latency: float | None = typer.Option(None, "--fault-latency", min=0, help="seconds added per request"),
    fault_error_rate: float | None = typer.Option(None, "--fault-error-rate", min=0, max=1, help="share of 500s"),
    fault_hang_rate: float | None = typer.Option(None, "--fault-hang-rate", min=0, max=1, help="share that hang"),
    fault_slow_stream: float | None = typer.Option(None, "--fault-slow-stream", min=1, help="decode time x this"),
    crash_after: int | None = typer.Option(None, "--crash-after", min=1, help="exit on the N-th inference request"),
) -> None:
    """Run a simulated vLLM engine: OpenAI API, vLLM metrics, prefix cache, batching, LoRA, faults."""
    # imported here so `fleetgate --help` does not pay for aiohttp and prometheus_client
    from fleetgate.domain.errors import ConfigError
    from fleetgate.sim.profiles import load_profile
    from fleetgate.sim.server import serve
    from fleetgate.sim.state import SimOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        prof = load_profile(profile).with_overrides(
            kv_blocks=kv_blocks,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            max_loras=max_loras,
            cold_load_s=cold_load_s,
        )
        prof = prof.with_faults(
            latency_s=fault_latency,
            error_rate=fault_error_rate,
            hang_rate=fault_hang_rate,
            slow_stream=fault_slow_stream,
            crash_after=crash_after,
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    options = SimOptions(
        model=model,
        seed=seed,
        time_scale=time_scale,
        prompt_tokens_details=prompt_tokens_details,
        max_cpu_loras=max_cpu_loras,
    )
    serve(prof, options, host=host, port=port)


def register(app: typer.Typer) -> None:
    """Add the `sim-engine` command to the fleetgate CLI."""
    app.command("sim-engine")(sim_engine)


if __name__ == "__main__":
    # `python -m fleetgate.cli.sim` starts faster than `fleetgate sim-engine` (no other command groups to import)
    typer.run(sim_engine)
