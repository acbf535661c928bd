"""The pooled HTTP clients for upstream engines: the lean hot-path pool, and aiohttp for everything else."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from fleetgate.config import GatewayConfig
from fleetgate.fleet.upstream import UpstreamPool


class EngineClient:
    """Owns the completion pool and the aiohttp session; create them inside the event loop with `start()`."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self._cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._upstream: UpstreamPool | None = None

    async def start(self) -> None:
        """Open the connection pools."""
        self._upstream = UpstreamPool(self._cfg.connect_timeout, self._cfg.idle_timeout)
        connector = aiohttp.TCPConnector(
            limit=0,  # admission, not the pool, decides how much goes upstream
            limit_per_host=0,
            # llama-server closes idle keep-alive connections; keep ours shorter so fewer go stale.
            keepalive_timeout=4.0,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._cfg.connect_timeout, sock_read=self._cfg.idle_timeout
            ),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        """Close the pools."""
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def upstream(self) -> UpstreamPool:
        """The completion requests' pool (start() must have run)."""
        if self._upstream is None:
            raise RuntimeError("EngineClient.start() was not awaited")
        return self._upstream

    @property
    def session(self) -> aiohttp.ClientSession:
        """The live session (start() must have run)."""
        if self._session is None:
            raise RuntimeError("EngineClient.start() was not awaited")
        return self._session

    async def get_json(self, url: str, timeout: float) -> Any:
        """GET a JSON document with a hard timeout (health checks, model lists)."""
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=body[:200].decode(errors="replace")
                )
            return orjson.loads(body) if body else None
