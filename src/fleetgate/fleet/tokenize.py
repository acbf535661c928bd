"""Ask an engine to count a prompt with its own tokenizer (never the gateway's guess), off the hot path.

How to ask is the engine dialect's (`EngineAdapter.count_prompt`); this is the I/O it is given.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.engines.base import JsonPost
from fleetgate.engines.registry import adapter_for
from fleetgate.fleet.client import EngineClient

_JSON = {"content-type": "application/json"}


def json_post(client: EngineClient, base_url: str, timeout: float) -> JsonPost:
    """A `post(path, body)` to one engine: its decoded JSON answer, or None when it does not answer 200."""

    async def post(path: str, body: dict[str, Any]) -> Any:
        async with client.session.post(
            base_url + path, data=orjson.dumps(body), headers=_JSON, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            data = await resp.read()
            return orjson.loads(data) if resp.status == 200 else None

    return post


async def count_prompt_tokens(
    client: EngineClient, kind: EngineKind, base_url: str, payload: dict[str, Any], timeout: float = 10.0
) -> int | None:
    """The engine's prompt token count for a chat or completion request, or None if it cannot tell us."""
    count = adapter_for(kind).count_prompt
    if count is None:
        return None
    try:
        return await count(payload, json_post(client, base_url, timeout))
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError):  # unreachable, slow, or not JSON either way
        return None
