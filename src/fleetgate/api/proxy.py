"""The hot path: one request from the client's bytes to the engine's and back, streamed without buffering."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

from fleetgate.api.asgi import ASGIReceive, ASGISend, read_body, send_error, send_json_bytes
from fleetgate.config import GatewayConfig
from fleetgate.errors import (
    ApiError,
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.engines.registry import adapter_for
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.ids import request_id
from fleetgate.metering.sse import SSERelay
from fleetgate.routing.router import RouteDecision, Router, RouteRequest
from fleetgate.tenancy.gate import TenantGate

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]
ENDPOINT_PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Failures where the request never reached the engine's application: safe to send again.
_RETRYABLE = (aiohttp.ClientConnectionError,)


@dataclass(slots=True)
class RequestOutcome:
    """What happened to one request; metering and observability read it when the request ends."""

    request_id: str
    principal: str
    endpoint: Endpoint
    model: str = ""
    stream: bool = False
    replica_id: str | None = None
    status: str = "ok"
    http_status: int = 200
    usage: dict[str, Any] | None = None
    attempts: int = 0
    started_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    ended_at: float | None = None
    events: int = 0


class _Disconnected(Exception):
    """The client went away."""


def parse_request(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """Parse and minimally validate an OpenAI request body; raise InvalidRequest saying what to fix."""
    if not body:
        raise InvalidRequest("request body is empty: send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string", param="model")
    if endpoint == "chat":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("`messages` is required and must be a non-empty array", param="messages")
    elif "prompt" not in payload:
        raise InvalidRequest("`prompt` is required", param="prompt")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    return payload


class Proxy:
    """Authenticates, routes, forwards and relays; retries only before any byte reached the client."""

    def __init__(
        self,
        cfg: GatewayConfig,
        registry: ReplicaRegistry,
        router: Router,
        client: EngineClient,
        gate: TenantGate,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.router = router
        self.client = client
        self.gate = gate
        self.in_flight = 0

    async def handle(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend, endpoint: Endpoint) -> None:
        """Serve one `/v1/chat/completions` or `/v1/completions` request."""
        rid = request_id()
        outcome = RequestOutcome(rid, "", endpoint)
        self.in_flight += 1
        try:
            try:
                principal = await self.gate.authenticate(_header(scope, b"authorization"))
                outcome.principal = principal.tenant.external_id
                body = await read_body(receive, self.cfg.max_body_bytes)
                payload = parse_request(body, endpoint)
                outcome.model = payload["model"]
                outcome.stream = payload.get("stream", False)
                serving = self.registry.serving(outcome.model)
                if not serving:
                    raise self._no_replica_for(outcome.model)
                admission = await self.gate.admit(principal, payload, rid)
            except ApiError as err:
                outcome.status, outcome.http_status = "rejected", err.status
                await send_error(send, err, rid)
                return
            try:
                await self._serve_watching_disconnect(payload, serving, outcome, receive, send)
            finally:
                await self.gate.settle(admission, outcome.usage, outcome.events)
        finally:
            self.in_flight -= 1
            outcome.ended_at = time.time()
            self._finish(outcome)

    def _finish(self, outcome: RequestOutcome) -> None:
        # Metering takes over from here (outbox, issue 5); keep the hot path free of I/O.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s %s model=%s replica=%s status=%s usage=%s",
                outcome.request_id,
                outcome.endpoint,
                outcome.model,
                outcome.replica_id,
                outcome.status,
                outcome.usage,
            )

    async def _serve_watching_disconnect(
        self,
        payload: dict[str, Any],
        serving: list[Replica],
        outcome: RequestOutcome,
        receive: ASGIReceive,
        send: ASGISend,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"finished": False, "disconnected": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["finished"]:
                        state["disconnected"] = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self._serve(payload, serving, outcome, send, state)
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            task.uncancel()
            outcome.status = "client_abort"
        except _Disconnected:
            outcome.status = "client_abort"
        finally:
            watcher.cancel()

    async def _serve(
        self,
        payload: dict[str, Any],
        serving: list[Replica],
        outcome: RequestOutcome,
        send: ASGISend,
        state: dict[str, bool],
    ) -> None:
        model = outcome.model
        client_wants_usage = False
        if outcome.stream:
            options = payload.get("stream_options") or {}
            client_wants_usage = bool(options.get("include_usage"))
            # Usage is billed from the engine's own numbers, so every stream must end with a usage chunk.
            payload["stream_options"] = {**options, "include_usage": True}
        body = orjson.dumps(payload)
        path = ENDPOINT_PATHS[outcome.endpoint]
        tried: set[str] = set()
        last_error: ApiError = UpstreamUnavailable(
            f"no healthy replica serves `{model}` right now; retry shortly", retry_after=2
        )
        for attempt in range(self.cfg.retries + 1):
            decision = self._route(model, serving, tried)
            if decision is None:
                break
            replica = decision.replica
            tried.add(replica.id)
            outcome.attempts = attempt + 1
            outcome.replica_id = replica.id
            try:
                sent = await self._forward(replica, decision, path, body, outcome, send, client_wants_usage, state)
            except ApiError as exc:
                last_error = exc
                if attempt < self.cfg.retries:
                    await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # jitter: no thundering herd
                continue
            if sent:
                return
        outcome.status = "engine_error"
        outcome.http_status = last_error.status
        await send_error(send, last_error, outcome.request_id)

    def _no_replica_for(self, model: str) -> ApiError:
        # An engine never reached has told us no models yet: the model may be its, so don't claim it doesn't exist.
        unknown = [r.id for r in self.registry.all() if not r.models and not r.healthy]
        if unknown:
            return UpstreamUnavailable(
                f"cannot serve `{model}` right now: engine(s) {', '.join(unknown)} are unreachable and their models"
                " are not known yet; retry shortly",
                retry_after=2,
            )
        return ModelNotFound(
            f"The model `{model}` does not exist. Available models: {', '.join(sorted(self.registry.models()))}",
            param="model",
        )

    def _route(self, model: str, serving: list[Replica], tried: set[str]) -> RouteDecision | None:
        healthy = [r for r in serving if r.healthy]
        fresh = [r for r in healthy if r.id not in tried]
        # A stale keep-alive connection is the usual failure: the same replica is fine for a second try.
        candidates = fresh or healthy
        if not candidates:
            return None
        return self.router.pick(RouteRequest(model=model), candidates)

    async def _forward(
        self,
        replica: Replica,
        decision: RouteDecision,
        path: str,
        body: bytes,
        outcome: RequestOutcome,
        send: ASGISend,
        client_wants_usage: bool,
        state: dict[str, bool],
    ) -> bool:
        """Send to one replica. Returns True once the client got a response; raises ApiError to retry elsewhere."""
        adapter = adapter_for(replica.kind)
        del adapter  # engine knobs arrive with metering and routing (cache_prompt, cache_salt)
        replica.in_flight += 1
        try:
            try:
                async with asyncio.timeout(self.cfg.first_byte_timeout):
                    resp = await self.client.session.post(
                        replica.url + path, data=body, headers={"content-type": "application/json"}
                    )
            except TimeoutError:
                raise UpstreamTimeout(
                    f"replica {replica.id} sent no response within {self.cfg.first_byte_timeout:.0f}s"
                ) from None
            except _RETRYABLE as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    replica.mark(False, f"connect failed: {exc}"[:200])
                raise UpstreamUnavailable(
                    f"replica {replica.id} could not be reached ({type(exc).__name__})", retry_after=1
                ) from None
            try:
                if resp.status >= 500:
                    detail = (await resp.read())[:300].decode(errors="replace")
                    raise UpstreamError(f"replica {replica.id} answered {resp.status}: {detail}")
                route_headers = _route_headers(outcome.request_id, decision)
                if resp.status != 200 or not outcome.stream:
                    await self._relay_whole(resp, outcome, send, route_headers, state)
                else:
                    await self._relay_stream(resp, outcome, send, route_headers, client_wants_usage, state)
                return True
            finally:
                resp.close()  # never return a half-read connection to the pool; closing also stops the engine
        finally:
            replica.in_flight -= 1

    async def _relay_whole(
        self,
        resp: aiohttp.ClientResponse,
        outcome: RequestOutcome,
        send: ASGISend,
        headers: list[tuple[bytes, bytes]],
        state: dict[str, bool],
    ) -> None:
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"replica {outcome.replica_id} broke off its response ({type(exc).__name__})") from None
        outcome.first_byte_at = time.time()
        outcome.http_status = resp.status
        if resp.status == 200:
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
                outcome.usage = parsed["usage"]
        else:
            outcome.status = "engine_error" if resp.status >= 500 else "rejected"
        content_type = resp.headers.get("content-type", "application/json").encode()
        state["finished"] = True
        await send_json_bytes(send, resp.status, data, [(b"content-type", content_type), *headers])

    async def _relay_stream(
        self,
        resp: aiohttp.ClientResponse,
        outcome: RequestOutcome,
        send: ASGISend,
        headers: list[tuple[bytes, bytes]],
        client_wants_usage: bool,
        state: dict[str, bool],
    ) -> None:
        relay = SSERelay(drop_usage_event=not client_wants_usage)
        started = False
        try:
            async for data in resp.content.iter_any():
                out = relay.feed(data)
                if not out:
                    continue
                if not started:
                    outcome.first_byte_at = time.time()
                    await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *headers]})
                    started = True
                await send({"type": "http.response.body", "body": out, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.usage, outcome.events = relay.usage, relay.events
            if not started:
                raise UpstreamError(
                    f"replica {outcome.replica_id} broke off the stream ({type(exc).__name__})"
                ) from None
            outcome.status = "engine_error" if not isinstance(exc, TimeoutError) else "timeout"
            await self._end_stream_with_error(send, outcome, f"engine stream interrupted ({type(exc).__name__})")
            return
        except OSError:
            # The ASGI server raises OSError from send() when the client is gone (ASGI spec 2.4).
            raise _Disconnected() from None
        outcome.usage, outcome.events = relay.usage, relay.events
        tail = relay.flush()
        if not started:
            outcome.first_byte_at = time.time()
            await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *headers]})
        if not relay.done:
            outcome.status = "engine_error"
            await self._end_stream_with_error(send, outcome, "engine stream ended without [DONE]", tail)
            return
        state["finished"] = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _end_stream_with_error(
        self, send: ASGISend, outcome: RequestOutcome, message: str, tail: bytes = b""
    ) -> None:
        err = UpstreamError(message)
        event = b"data: " + orjson.dumps({"error": {"message": message, "type": err.type, "code": err.code.value}})
        try:
            await send({"type": "http.response.body", "body": tail + event + b"\n\n", "more_body": False})
        except OSError:
            raise _Disconnected() from None


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _route_headers(rid: str, decision: RouteDecision) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", rid.encode()),
        (b"x-fleetgate-replica", decision.replica.id.encode()),
        (b"x-fleetgate-route", f"{decision.policy}:{decision.reason}".encode()),
    ]
