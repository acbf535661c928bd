"""Ask an engine to count a prompt with its own tokenizer (never the gateway's guess), off the hot path."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.fleet.client import EngineClient


async def _post(client: EngineClient, url: str, body: dict[str, Any], timeout: float) -> Any:
    async with client.session.post(
        url,
        data=orjson.dumps(body),
        headers={"content-type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        data = await resp.read()
        if resp.status != 200:
            return None
        return orjson.loads(data)


async def count_prompt_tokens(
    client: EngineClient, kind: EngineKind, base_url: str, payload: dict[str, Any], timeout: float = 10.0
) -> int | None:
    """The engine's prompt token count for a chat or completion request, or None if it cannot tell us."""
    try:
        if kind == "llamacpp":
            return await _llamacpp(client, base_url, payload, timeout)
        if kind in ("vllm", "sglang"):
            return await _vllm(client, base_url, payload, timeout)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return None


async def _llamacpp(client: EngineClient, base_url: str, payload: dict[str, Any], timeout: float) -> int | None:
    # llama-server renders the chat template itself (/apply-template); its /tokenize then counts what it will see.
    if "messages" in payload:
        rendered = await _post(client, base_url + "/apply-template", {"messages": payload["messages"]}, timeout)
        if not isinstance(rendered, dict) or not isinstance(rendered.get("prompt"), str):
            return None
        content: Any = rendered["prompt"]
    else:
        content = payload.get("prompt")
        if not isinstance(content, str):
            return None
    result = await _post(client, base_url + "/tokenize", {"content": content}, timeout)
    return len(result["tokens"]) if isinstance(result, dict) and isinstance(result.get("tokens"), list) else None


async def _vllm(client: EngineClient, base_url: str, payload: dict[str, Any], timeout: float) -> int | None:
    body: dict[str, Any] = {"model": payload.get("model")}
    if "messages" in payload:
        body["messages"] = payload["messages"]
    else:
        body["prompt"] = payload.get("prompt")
    result = await _post(client, base_url + "/tokenize", body, timeout)
    if isinstance(result, dict) and isinstance(result.get("count"), int):
        return int(result["count"])
    return None
