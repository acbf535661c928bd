"""The OpenAI surface vLLM serves: chat and text completions (stream and not), /tokenize and /v1/models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from fleetgate.sim import protocol as p
from fleetgate.sim.engine import Sequence, Status
from fleetgate.sim.protocol import SimApiError
from fleetgate.sim.state import SimState, json_response, read_json, sse, state_of
from fleetgate.sim.text import TextGenerator, encode, piece_id, render_chat, seed_for, split_pieces

Event = tuple[list[str], str | None]


def _adapter_for(st: SimState, model: object) -> str | None:
    """The adapter a `model` field names, None for the base model; vLLM's 404 for anything else."""
    if model is None or model == st.model:
        return None
    if isinstance(model, str) and model in st.lora.adapters:
        return model
    raise p.model_not_found(model)


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimApiError(400, "BadRequestError", f"'{name}' must be an integer.", param=name)
    return value


def _max_tokens(st: SimState, n_prompt: int, requested: int | None) -> int:
    """vLLM's _validate_input: prompt below the context, prompt plus max_tokens within it."""
    limit = st.engine.max_model_len
    if n_prompt >= limit:
        raise SimApiError(
            400,
            "BadRequestError",
            f"This model's maximum context length is {limit} tokens. However, your request has {n_prompt} input "
            "tokens. Please reduce the length of the input messages.",
            param="input_tokens",
        )
    if requested is None:
        return limit - n_prompt
    if requested < 1:
        raise SimApiError(400, "BadRequestError", "max_tokens must be at least 1.", param="max_tokens")
    if n_prompt + requested > limit:
        raise SimApiError(
            400,
            "BadRequestError",
            f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's maximum context length "
            f"is {limit} tokens and your request has {n_prompt} input tokens ({requested} > {limit} - {n_prompt}).",
            param="max_tokens",
        )
    return requested


def _common_checks(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise SimApiError(400, "BadRequestError", "The simulator serves n=1 only.", param="n")
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise SimApiError(400, "BadRequestError", "Parameter 'cache_salt' must be a non-empty string.", "cache_salt")


def _start(
    st: SimState, rid: str, prompt: list[int], body: dict[str, Any], adapter: str | None, max_tokens: int
) -> tuple[Sequence, asyncio.Queue[Event]]:
    """Create the sequence, hand it to the engine, and return the queue its tokens arrive on."""
    seed = _int_field(body, "seed")
    prof = st.profile
    gen = TextGenerator(seed_for(prompt, seed, adapter), prof.output_tokens_min, prof.output_tokens_max)
    min_tokens = _int_field(body, "min_tokens") or 0
    gen.natural_length = max(gen.natural_length, min_tokens)
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def listen(_: Sequence, pieces: list[str], finish: str | None) -> None:
        queue.put_nowait((pieces, finish))

    seq = Sequence(
        rid,
        prompt,
        max_tokens,
        gen,
        st.clock.now(),
        adapter=adapter,
        salt=body.get("cache_salt"),
        ignore_eos=bool(body.get("ignore_eos")),
        listener=listen,
    )
    st.engine.add(seq)
    st.runner.kick()
    return seq, queue


def _release(st: SimState, seq: Sequence) -> None:
    # the client left (cancelled handler or broken pipe) before the end: free the sequence and its blocks now
    if seq.status is not Status.FINISHED:
        st.engine.abort(seq)
        st.runner.kick()


async def _events(queue: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    while True:
        pieces, finish = await queue.get()
        yield pieces, finish
        if finish is not None:
            return


def _usage(st: SimState, seq: Sequence, *, stream: bool) -> dict[str, Any]:
    cached = max(seq.num_cached_tokens, 0)
    return p.usage(
        len(seq.prompt), len(seq.output_ids), cached, details=st.options.prompt_tokens_details, stream=stream
    )


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    # vLLM's StreamOptions: include_usage defaults to True once stream_options is present at all
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return False, False
    include = options.get("include_usage", True) is not False
    return include, include and bool(options.get("continuous_usage_stats"))


async def _open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    st = state_of(request)
    body = await read_json(request)
    await st.admit()
    adapter = _adapter_for(st, body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise SimApiError(400, "BadRequestError", "'messages' must be a non-empty list of objects.", "messages")
    _common_checks(body)
    prompt = encode(render_chat(messages, add_generation_prompt=body.get("add_generation_prompt") is not False))
    requested = _int_field(body, "max_completion_tokens")
    max_tokens = _max_tokens(st, len(prompt), requested if requested is not None else _int_field(body, "max_tokens"))
    rid, model, created = f"chatcmpl-{p.random_id()}", adapter or st.model, int(time.time())
    seq, queue = _start(st, rid, prompt, body, adapter, max_tokens)
    try:
        if not body.get("stream"):
            text, reason = await _collect(queue)
            return json_response(p.chat_response(rid, model, text, reason, _usage(st, seq, stream=False), created))
        include_usage, continuous = _stream_flags(body)
        resp = await _open_stream(request)
        first = True
        async for pieces, finish in _events(queue):
            use = _usage(st, seq, stream=True) if continuous else None
            if first:
                # vLLM sends the role with empty content together with the first token
                role_use = {**use, "completion_tokens": 0, "total_tokens": len(prompt)} if use else None
                await resp.write(
                    sse(p.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None, role_use))
                )
                first = False
            await resp.write(sse(p.chat_chunk(rid, model, created, {"content": "".join(pieces)}, finish, use)))
        if include_usage:
            obj = "chat.completion.chunk"
            await resp.write(sse(p.usage_chunk(rid, model, created, obj, _usage(st, seq, stream=True))))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        _release(st, seq)


def _completion_prompt(body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise SimApiError(400, "BadRequestError", "'prompt' must be a string or a list of token ids.", param="prompt")


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions."""
    st = state_of(request)
    body = await read_json(request)
    await st.admit()
    adapter = _adapter_for(st, body.get("model"))
    _common_checks(body)
    prompt = _completion_prompt(body)
    # CompletionRequest.max_tokens defaults to 16 in vLLM (chat defaults to the rest of the context)
    requested = _int_field(body, "max_tokens") if "max_tokens" in body else 16
    max_tokens = _max_tokens(st, len(prompt), requested)
    rid, model, created = f"cmpl-{p.random_id()}", adapter or st.model, int(time.time())
    seq, queue = _start(st, rid, prompt, body, adapter, max_tokens)
    try:
        if not body.get("stream"):
            text, reason = await _collect(queue)
            final = _usage(st, seq, stream=False)
            return json_response(p.completion_response(rid, model, text, reason, final, created))
        include_usage, continuous = _stream_flags(body)
        resp = await _open_stream(request)
        async for pieces, finish in _events(queue):
            use = _usage(st, seq, stream=True) if continuous else None
            await resp.write(sse(p.completion_chunk(rid, model, created, "".join(pieces), finish, use)))
        if include_usage:
            await resp.write(sse(p.usage_chunk(rid, model, created, "text_completion", _usage(st, seq, stream=True))))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        _release(st, seq)


async def _collect(queue: asyncio.Queue[Event]) -> tuple[str, str]:
    parts: list[str] = []
    finish = "abort"
    async for pieces, reason in _events(queue):
        parts.extend(pieces)
        finish = reason or finish
    return "".join(parts), finish


async def tokenize(request: web.Request) -> web.Response:
    """POST /tokenize: vLLM's TokenizeResponse for a prompt or chat messages (same tokens the engine counts)."""
    st = state_of(request)
    body = await read_json(request)
    _adapter_for(st, body.get("model"))
    if isinstance(body.get("messages"), list):
        text = render_chat(body["messages"], add_generation_prompt=body.get("add_generation_prompt") is not False)
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise SimApiError(400, "BadRequestError", "Give 'prompt' (a string) or 'messages' (a list).")
    pieces = split_pieces(text)
    return json_response(
        {
            "count": len(pieces),
            "max_model_len": st.engine.max_model_len,
            "tokens": [piece_id(x) for x in pieces],
            "token_strs": pieces if body.get("return_token_strs") else None,
        }
    )


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: the served model, then loaded adapters with `parent` (vLLM's show_available_models)."""
    st = state_of(request)
    cards = [p.model_card(st.model, root=st.model, parent=None, max_model_len=st.engine.max_model_len)]
    cards += [p.model_card(a.name, root=a.path, parent=st.model, max_model_len=None) for a in st.lora.adapters.values()]
    return json_response({"object": "list", "data": cards})


def add_routes(app: web.Application) -> None:
    """Register the OpenAI-compatible routes."""
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/v1/models", models)
