"""The pooled HTTP clients for upstream engines: the lean hot-path pool, and aiohttp for everything else.

Both reach an engine the same way: its base URL (with any path prefix) joined with the path, TLS for https://
engines with one SSL context (system CAs plus every replica's `ca_file`), and `Authorization: Bearer <key>` on every
call to an engine that has an `api_key` (the replica registry says whose URL it is). The key is never logged.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import orjson

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import ConfigError
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.fleet.upstream import UpstreamPool


def engine_ssl_context(registry: ReplicaRegistry | None) -> ssl.SSLContext:
    """System CAs plus the CA file of every replica that names one; ConfigError when one cannot be read."""
    context = ssl.create_default_context()
    for replica in registry.all() if registry is not None else ():
        if replica.ca_file is None:
            continue
        try:
            context.load_verify_locations(cafile=str(replica.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"engine {replica.id}: ca_file {replica.ca_file} cannot be used: {exc}") from None
    return context


class EngineClient:
    """Owns the completion pool and the aiohttp session; create them inside the event loop with `start()`."""

    def __init__(self, cfg: GatewayConfig, registry: ReplicaRegistry | None = None) -> None:
        self._cfg = cfg
        self._registry = registry
        self._session: aiohttp.ClientSession | None = None
        self._upstream: UpstreamPool | None = None

    def api_key_for(self, url: str) -> str | None:
        """The API key of the engine a URL belongs to (base URL or base URL + path), if it has one."""
        owner = self._registry.owner_of(url) if self._registry is not None else None
        return owner.api_key if owner is not None else None

    async def _authorize(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """aiohttp middleware: the engine's key on every off-path call (health, metrics, adapters, tokenize)."""
        key = self.api_key_for(str(request.url))
        if key is not None and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {key}"
        return await handler(request)

    async def start(self) -> None:
        """Open the connection pools."""
        context = engine_ssl_context(self._registry)
        self._upstream = UpstreamPool(
            self._cfg.connect_timeout, self._cfg.idle_timeout, ssl_context=context, api_key_for=self.api_key_for
        )
        connector = aiohttp.TCPConnector(
            limit=0,  # admission, not the pool, decides how much goes upstream
            limit_per_host=0,
            # llama-server closes idle keep-alive connections; keep ours shorter so fewer go stale.
            keepalive_timeout=4.0,
            enable_cleanup_closed=True,
            ssl=context,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._cfg.connect_timeout, sock_read=self._cfg.idle_timeout
            ),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            middlewares=(self._authorize,) if self._registry is not None else (),
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
