"""Everything one simulator process holds, and the helpers its HTTP handlers share."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from fleetgate.sim.engine import Engine
from fleetgate.sim.faults import CRASH_EXIT_CODE, FaultInjector, Verdict
from fleetgate.sim.lora import LoraRegistry
from fleetgate.sim.metrics import VllmMetrics
from fleetgate.sim.profiles import Profile
from fleetgate.sim.protocol import SimApiError
from fleetgate.sim.runner import EngineRunner, ScaledClock

log = logging.getLogger("fleetgate.sim")


@dataclass(frozen=True)
class SimOptions:
    """Process options (the CLI flags)."""

    model: str = "smollm2"
    seed: int = 0
    time_scale: float = 1.0
    prompt_tokens_details: bool = True  # vLLM's --enable-prompt-tokens-details
    max_cpu_loras: int | None = None


class SimState:
    """Engine, its real-time runner, metrics, adapters and faults of one simulated replica."""

    def __init__(self, profile: Profile, options: SimOptions) -> None:
        self.profile = profile
        self.options = options
        self.model = options.model
        self.clock = ScaledClock(options.time_scale)
        self.lora = LoraRegistry(profile.max_loras, options.max_cpu_loras)
        self.engine = Engine(profile, self.clock, lora=self.lora)
        self.metrics = VllmMetrics(options.model, self.engine, cache_info=cache_config_info(profile))
        self.engine.observer = self.metrics
        self.runner = EngineRunner(self.engine, self.clock)
        self.faults = FaultInjector(profile.faults, options.seed)
        self.engine.slow_factor = self.faults.faults.slow_stream
        self.loaded = asyncio.Event()

    def wall(self, model_seconds: float) -> float:
        """Wall seconds for a model-time delay (every delay is divided by the time scale)."""
        return self.clock.wall(model_seconds)

    async def admit(self) -> None:
        """Gate for inference requests: 503 while loading, then the fault dice."""
        if not self.loaded.is_set():
            raise SimApiError(503, "ServiceUnavailableError", "The model is still loading.")
        verdict = self.faults.judge()
        if verdict is Verdict.CRASH:
            log.warning("injected crash: exiting with %d", CRASH_EXIT_CODE)
            os._exit(CRASH_EXIT_CODE)  # no cleanup on purpose: this is what a dying engine looks like
        if verdict is Verdict.ERROR:
            raise SimApiError(500, "InternalServerError", "Internal server error (injected fault)")
        if verdict is Verdict.HANG:
            await asyncio.Future()  # never resolves; cancelled when the client hangs up
        if self.faults.faults.latency_s:
            await asyncio.sleep(self.wall(self.faults.faults.latency_s))


def cache_config_info(profile: Profile) -> dict[str, str]:
    """The CacheConfig fields vLLM puts on vllm:cache_config_info (a subset: the ones a router reads)."""
    return {
        "block_size": str(profile.block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": "True",
        "gpu_memory_utilization": "0.9",
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(profile.kv_blocks),
        "prefix_caching_hash_algo": "sha256",
    }


STATE = web.AppKey("sim_state", SimState)


def state_of(request: web.Request) -> SimState:
    """The SimState of the app serving `request`."""
    return request.app[STATE]


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response (orjson: fast enough for thousands of chunks a second)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(exc: SimApiError) -> web.Response:
    """vLLM's ErrorResponse JSON with the error's status."""
    return json_response(exc.body(), exc.status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or vLLM's 400."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise SimApiError(400, "BadRequestError", f"Invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise SimApiError(400, "BadRequestError", "The request body must be a JSON object.")
    return data


def sse(data: Any) -> bytes:
    """One server-sent event line as vLLM frames it."""
    return b"data: " + orjson.dumps(data) + b"\n\n"
