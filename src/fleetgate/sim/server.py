"""The simulator process: app assembly, health, /metrics, LoRA admin, fault and state endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics
from pydantic import ValidationError

from fleetgate.sim import api
from fleetgate.sim.profiles import Profile
from fleetgate.sim.protocol import SimApiError
from fleetgate.sim.state import STATE, SimOptions, SimState, error_response, json_response, read_json, state_of

log = logging.getLogger("fleetgate.sim")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map SimApiError to vLLM's ErrorResponse; anything unexpected becomes vLLM's 500 shape."""
    try:
        return await handler(request)
    except SimApiError as exc:
        return error_response(exc)
    except web.HTTPException:
        raise
    except ConnectionResetError:
        raise  # the client left; nothing to answer
    except Exception as exc:  # the server's outermost boundary: a bug must answer 500, not drop the connection
        log.exception("unhandled error on %s", request.path)
        return error_response(SimApiError(500, "InternalServerError", f"{type(exc).__name__}: {exc}"))


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 with an empty body once loaded (as vLLM), 503 while the model 'loads'."""
    if state_of(request).loaded.is_set():
        return web.Response(status=200)
    return json_response({"error": {"message": "loading", "type": "ServiceUnavailableError", "code": 503}}, 503)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format."""
    body = state_of(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def load_lora_adapter(request: web.Request) -> web.Response:
    """POST /v1/load_lora_adapter: plain-text success after the profile's load time, vLLM's errors otherwise."""
    st = state_of(request)
    body = await read_json(request)
    name, path = st.lora.validate_load(body.get("lora_name"), body.get("lora_path"), bool(body.get("load_inplace")))
    await asyncio.sleep(st.wall(st.profile.lora_load_s))  # vLLM's add_lora preloads the weights before answering
    st.lora.validate_load(name, path, bool(body.get("load_inplace")))  # a concurrent load of the same name won
    st.lora.register(name, path)
    st.runner.kick()
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: web.Request) -> web.Response:
    """POST /v1/unload_lora_adapter."""
    st = state_of(request)
    body = await read_json(request)
    name = body.get("lora_name")
    st.lora.unregister(name if isinstance(name, str) else None)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def reset_prefix_cache(request: web.Request) -> web.Response:
    """POST /reset_prefix_cache (vLLM dev-mode endpoint): forget cached blocks when none is in use."""
    if state_of(request).engine.reset_prefix_cache():
        return web.Response(status=200)
    raise SimApiError(400, "BadRequestError", "Prefix cache is in use; reset refused.")


async def get_faults(request: web.Request) -> web.Response:
    """GET /sim/faults."""
    return json_response(state_of(request).faults.faults.model_dump())


async def post_faults(request: web.Request) -> web.Response:
    """POST /sim/faults: merge the given fields into the current faults."""
    st = state_of(request)
    body = await read_json(request)
    try:
        faults = st.faults.update(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SimApiError(400, "BadRequestError", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    st.engine.slow_factor = faults.slow_stream
    return json_response(faults.model_dump())


async def sim_state(request: web.Request) -> web.Response:
    """GET /sim/state: the engine's insides, for tests and debugging."""
    st = state_of(request)
    e = st.engine
    return json_response(
        {
            "loaded": st.loaded.is_set(),
            "model_time": st.clock.now(),
            "running": len(e.running),
            "waiting": len(e.waiting),
            "kv_blocks_total": e.pool.num_blocks,
            "kv_blocks_used": e.pool.num_used,
            "kv_blocks_free": e.pool.num_free,
            "cached_blocks": e.pool.num_cached,
            "evictions": e.pool.evictions,
            "steps": e.stats.steps,
            "prefix_queries": e.stats.prefix_queries,
            "prefix_hits": e.stats.prefix_hits,
            "preemptions": e.stats.preemptions,
            "finished": e.stats.finished,
            "adapters": sorted(st.lora.adapters),
            "resident_adapters": st.lora.resident(),
            "adapter_loads": st.lora.loads,
            "faults": st.faults.faults.model_dump(),
            "fault_requests": st.faults.requests,
        }
    )


def build_app(profile: Profile, options: SimOptions) -> web.Application:
    """The aiohttp application of one simulated replica."""
    app = web.Application(middlewares=[errors], client_max_size=64 * 1024 * 1024)
    app[STATE] = SimState(profile, options)
    api.add_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    app.router.add_get("/sim/faults", get_faults)
    app.router.add_post("/sim/faults", post_faults)
    app.router.add_get("/sim/state", sim_state)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    st = app[STATE]
    st.runner.start()
    asyncio.get_running_loop().call_later(st.wall(st.profile.cold_load_s), st.loaded.set)


async def _stop(app: web.Application) -> None:
    await app[STATE].runner.stop()


def serve(profile: Profile, options: SimOptions, *, host: str, port: int) -> None:
    """Run one simulator until interrupted (blocking)."""
    # vLLM serves its metrics through a multiprocess registry, which exports no *_created series
    disable_created_metrics()  # type: ignore[no-untyped-call]
    app = build_app(profile, options)
    log.info(
        "sim-engine %s on http://%s:%d (profile %s, x%g)", options.model, host, port, profile.name, options.time_scale
    )
    # handler_cancellation: a client hang-up cancels its handler, which aborts the sequence and frees its blocks
    web.run_app(app, host=host, port=port, print=None, handler_cancellation=True, access_log=None)
