"""The hot path: one request from the client's bytes to the engine's and back, streamed without buffering."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import orjson

from fleetgate.api.asgi import ASGIReceive, ASGISend, read_body, send_error
from fleetgate.api.relay import Disconnected, relay_stream, relay_whole
from fleetgate.api.request import ENDPOINT_PATHS, Endpoint, RequestOutcome, parse_request
from fleetgate.api.server import ON_DISCONNECT
from fleetgate.config import GatewayConfig
from fleetgate.errors import (
    ApiError,
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fleetgate.fleet.adapters import AdapterPool, can_load
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.engines.registry import adapter_for
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.fleet.upstream import ConnectFailed, UpstreamIOError, UpstreamResponse
from fleetgate.ids import request_id
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.iolog import IOLog
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.routing.request import route_request_from
from fleetgate.routing.router import FeedbackRouter, RouteDecision, RouteRequest
from fleetgate.scheduling.admission import AdmissionController, Slot
from fleetgate.scheduling.fair_queue import PRIORITIES
from fleetgate.tenancy.adapter_registry import Adapter
from fleetgate.tenancy.auth import Principal
from fleetgate.tenancy.gate import Admission, TenantGate
from fleetgate.tenancy.policy import DEFAULT_OUTPUT_RESERVATION

__all__ = ["Endpoint", "Proxy", "parse_request"]

log = logging.getLogger(__name__)

_NOTHING_USED: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0}
_PRIORITY_HEADER_VALUES = {name: index for index, name in enumerate(PRIORITIES)}
_NO_ADAPTER = nullcontext()  # stateless: one for every request without an adapter


class Proxy:
    """Authenticates, admits, routes, forwards and relays; retries only before any byte reached the client."""

    def __init__(
        self,
        cfg: GatewayConfig,
        registry: ReplicaRegistry,
        router: FeedbackRouter,
        client: EngineClient,
        gate: TenantGate,
        capture: UsageCapture,
        iolog: IOLog | None = None,
        metrics: GatewayMetrics | None = None,
        admission: AdmissionController | None = None,
        adapters: AdapterPool | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.router = router
        self.client = client
        self.gate = gate
        self.capture = capture
        self.iolog = iolog
        self.metrics = metrics
        self.admission = admission
        self.adapters = adapters
        self.in_flight = 0
        # (request_id, tenant, model, replica, route) of every routing decision, for the dashboard
        self.decisions: Callable[[str, str, str, str, str], None] | None = None

    async def handle(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend, endpoint: Endpoint) -> None:
        """Serve one `/v1/chat/completions` or `/v1/completions` request."""
        outcome = RequestOutcome(request_id(), endpoint)
        self.in_flight += 1
        try:
            admitted = await self._admit(scope, receive, send, outcome)
            if admitted is None:
                return
            payload, serving, admission = admitted
            holder: list[Slot] = []
            try:
                await self._serve_watching_disconnect(
                    payload, serving, outcome, scope, receive, send, admission, holder
                )
            finally:
                if holder and self.admission is not None:
                    self.admission.release(holder[0])
                self._record(outcome)
                # A request that never reached an engine (refused in the queue, client left while waiting) costs
                # nothing; otherwise the engine's usage, or what was counted if it never came.
                usage = outcome.usage if outcome.begun else _NOTHING_USED
                await self.gate.settle(admission, usage, outcome.content_events)
        finally:
            self.in_flight -= 1
            if self.metrics is not None:
                self.metrics.observe(outcome, outcome.route, time.time())

    async def _admit(
        self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend, outcome: RequestOutcome
    ) -> tuple[dict[str, Any], list[Replica], Admission] | None:
        principal: Principal | None = None
        try:
            principal = await self.gate.authenticate(_header(scope, b"authorization"))
            _read_scheduling_headers(scope, outcome)
            outcome.tenant_id, outcome.key_id = principal.tenant.id, principal.key.id
            outcome.tenant_name = principal.tenant.external_id
            raw = await read_body(receive, self.cfg.max_body_bytes)
            if principal.tenant.io_log and self.iolog is not None:
                outcome.request_body, outcome.response_parts = raw, []
                outcome.io_retention_days = principal.tenant.io_log_retention_days
            payload = parse_request(raw, outcome.endpoint)
            outcome.model = payload["model"]
            outcome.stream = payload.get("stream", False)
            serving = self.registry.serving(outcome.model)
            if not serving and self.adapters is not None:
                serving = self._adapter_target(payload, principal, outcome)
            if not serving:
                raise self._no_replica_for(outcome.model)
            admission = await self.gate.admit(
                principal,
                payload,
                outcome.request_id,
                model=outcome.model,
                adapter=outcome.lora.name if outcome.lora is not None else None,
            )
        except ApiError as err:
            outcome.status, outcome.http_status = "rejected", err.status
            if err.reason is not None and self.metrics is not None:
                self.metrics.rejected(outcome.tenant_name, err.reason)
            if principal is not None:
                self._record(outcome)  # a refused request of a known tenant is worth counting (throttles)
            await send_error(send, err, outcome.request_id)
            return None
        outcome.est_prompt_tokens = admission.decision.est_input_tokens
        return payload, serving, admission

    def _record(self, outcome: RequestOutcome) -> None:
        if outcome.recorded:
            return
        outcome.recorded = True
        self.capture.finish(outcome.measured())
        if outcome.request_body is not None and self.iolog is not None:
            self.iolog.record(
                request_id=outcome.request_id,
                tenant_id=outcome.tenant_id,
                key_id=outcome.key_id,
                model=outcome.model,
                status=outcome.status,
                request_body=outcome.request_body,
                response_body=b"".join(outcome.response_parts or ()),
                retention_days=outcome.io_retention_days,
            )

    async def _queue(self, admission: Admission, outcome: RequestOutcome) -> Slot:
        """Wait for room on the fleet (fair across tenants, strict across priorities), or raise 429/503."""
        assert self.admission is not None
        tenant = admission.principal.tenant
        decision = admission.decision
        self.admission.check_context(outcome.model, decision.est_input_tokens, decision.max_output_tokens)
        priority = PRIORITIES.index(tenant.priority)
        asked = _PRIORITY_HEADER_VALUES.get(outcome.priority_header or "")
        if asked is not None and asked > priority:
            priority = asked  # a client may lower its own priority, never raise it
        cost = decision.est_input_tokens + (decision.max_output_tokens or DEFAULT_OUTPUT_RESERVATION)
        return await self.admission.acquire(
            outcome.model, tenant.id, priority, cost, tenant.weight, outcome.queue_timeout
        )

    def _adapter_target(self, payload: dict[str, Any], principal: Principal, outcome: RequestOutcome) -> list[Replica]:
        """Resolve a `model` naming a LoRA adapter (`adapter` or `base:adapter`): the replicas that can serve it."""
        assert self.adapters is not None
        target = self.adapters.catalog.resolve(outcome.model, principal.tenant, self.registry.models())
        if target.adapter is None:
            return []
        lora = target.adapter
        outcome.model, outcome.lora = target.model, lora
        payload["model"] = lora.name  # vLLM selects an adapter by its name as the model
        serving = self.registry.serving(target.model)
        capable = [r for r in serving if lora.name in r.adapters or can_load(r)]
        if serving and not capable:
            raise UpstreamUnavailable(
                f"no replica of `{target.model}` can serve LoRA adapter `{lora.name}`: its replicas"
                f" ({', '.join(r.kind for r in serving)}) cannot load adapters at run time; add a vLLM replica",
                retry_after=30,
            )
        return capable

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

    async def _serve_watching_disconnect(
        self,
        payload: dict[str, Any],
        serving: list[Replica],
        outcome: RequestOutcome,
        scope: dict[str, Any],
        receive: ASGIReceive,
        send: ASGISend,
        admission: Admission,
        holder: list[Slot],
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"disconnected": False}

        def gone() -> None:
            if not outcome.recorded:  # after the finish record, a disconnect is the normal end
                state["disconnected"] = True
                task.cancel()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone()
                    return

        # Our own server calls back when the client goes (api/server.py); any other ASGI server gets a watcher.
        listen = scope.get("extensions", {}).get(ON_DISCONNECT)
        watcher = None
        if listen is not None:
            listen(gone)
        else:
            watcher = asyncio.create_task(watch())
        try:
            if self.admission is not None:
                try:
                    holder.append(await self._queue(admission, outcome))
                except ApiError as err:
                    outcome.status, outcome.http_status = "rejected", err.status
                    if err.reason is not None and self.metrics is not None:
                        self.metrics.rejected(outcome.tenant_name, err.reason)
                    await send_error(send, err, outcome.request_id)
                    return
            await self._serve(payload, serving, outcome, send)
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            task.uncancel()
            outcome.status = "client_abort"
        except Disconnected:
            outcome.status = "client_abort"
        finally:
            if watcher is not None:
                watcher.cancel()
            elif listen is not None:
                listen(None)

    async def _serve(
        self, payload: dict[str, Any], serving: list[Replica], outcome: RequestOutcome, send: ASGISend
    ) -> None:
        client_wants_usage = False
        if outcome.stream:
            options = payload.get("stream_options") or {}
            client_wants_usage = bool(options.get("include_usage"))
            # Usage is billed from the engine's own numbers, so every stream must end with a usage chunk.
            payload["stream_options"] = {**options, "include_usage": True}
        bodies: dict[str, bytes] = {}  # per engine kind (vLLM gets the tenant's cache salt); built once each
        lora = outcome.lora
        # Built once: a retry must not hash the prompt again.
        route_request = route_request_from(
            payload,
            outcome.tenant_id,
            outcome.session,
            est_tokens=outcome.est_prompt_tokens,
            adapter=lora.name if lora is not None else None,
            model=outcome.model,
        )
        tried: set[str] = set()
        last_error: ApiError = UpstreamUnavailable(
            f"no healthy replica serves `{outcome.model}` right now; retry shortly", retry_after=2
        )
        for attempt in range(self.cfg.retries + 1):
            decision = self._route(route_request, serving, tried)
            if decision is None:
                break
            tried.add(decision.replica.id)
            outcome.attempts = attempt + 1
            outcome.replica = decision.replica
            # The header carries the full reason; the metric label only its kind, so cardinality stays bounded.
            outcome.route = f"{decision.policy}:{decision.reason.partition(':')[0]}"
            if self.decisions is not None:
                route = f"{decision.policy}:{decision.reason}"
                self.decisions(outcome.request_id, outcome.tenant_name, outcome.model, decision.replica.id, route)
            if not outcome.begun:
                outcome.begun = True
                self.capture.begin(outcome.measured(), decision.replica, payload)
            kind = decision.replica.kind
            body = bodies.get(kind)
            if body is None:
                body = bodies[kind] = orjson.dumps(adapter_for(kind).prepare(payload, outcome.tenant_id))
            try:
                await self._forward(decision, body, outcome, send, client_wants_usage, lora)
                return
            except ApiError as exc:
                last_error = exc
                log.warning(
                    "request %s: attempt %d on replica %s failed: %s",
                    outcome.request_id,
                    attempt + 1,
                    decision.replica.id,
                    exc.message,
                )
                if attempt < self.cfg.retries:
                    await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # jitter: no thundering herd
        outcome.status = "timeout" if isinstance(last_error, UpstreamTimeout) else "engine_error"
        outcome.http_status = last_error.status
        await send_error(send, last_error, outcome.request_id)

    def _route(self, request: RouteRequest, serving: list[Replica], tried: set[str]) -> RouteDecision | None:
        healthy = [r for r in serving if r.healthy]
        fresh = [r for r in healthy if r.id not in tried]
        # A stale keep-alive connection is the usual failure: the same replica is fine for a second try.
        candidates = fresh or healthy
        if not candidates:
            return None
        return self.router.pick(request, candidates)

    async def _forward(
        self,
        decision: RouteDecision,
        body: bytes,
        outcome: RequestOutcome,
        send: ASGISend,
        client_wants_usage: bool,
        lora: Adapter | None = None,
    ) -> None:
        """Send to one replica and relay its answer; raises ApiError (before any byte was sent) to retry."""
        pool = self.adapters
        # An adapter in use on a replica is never unloaded there, from before its load until the last byte.
        with _NO_ADAPTER if lora is None or pool is None else pool.using(decision.replica, lora.name):
            await self._forward_to(decision, body, outcome, send, client_wants_usage, lora)

    async def _forward_to(
        self,
        decision: RouteDecision,
        body: bytes,
        outcome: RequestOutcome,
        send: ASGISend,
        client_wants_usage: bool,
        lora: Adapter | None,
    ) -> None:
        replica = decision.replica
        replica.in_flight += 1
        verdict: bool | None = False  # for the breaker: False replica failure, True fine, None no verdict
        try:
            if lora is not None and self.adapters is not None:
                verdict = None  # a bad adapter must not open every replica's breaker
                outcome.adapter_load = "cold" if await self.adapters.ensure(replica, lora) else "warm"
                verdict = False
            resp = await self._open(replica, ENDPOINT_PATHS[outcome.endpoint], body)
            try:
                if resp.status >= 500:
                    detail = (await resp.read())[:300].decode(errors="replace")
                    raise UpstreamError(f"replica {replica.id} answered {resp.status}: {detail}")
                if resp.status == 404 and lora is not None:
                    # The engine no longer has the adapter (unloaded by another gateway, or restarted): forget
                    # it there and try again, which loads it anew; the client never sees the engine's 404.
                    replica.adapters = replica.adapters - {lora.name}
                    verdict = None
                    raise UpstreamError(f"replica {replica.id} had lost LoRA adapter `{lora.name}`")
                headers = _route_headers(outcome.request_id, decision, outcome.adapter_load)
                verdict = None  # from here a client hang-up says nothing about the replica
                if resp.status != 200 or not outcome.stream:
                    await relay_whole(resp, outcome, send, headers, self._record)
                else:
                    await relay_stream(resp, outcome, send, headers, client_wants_usage, self._record)
                verdict = outcome.status not in ("engine_error", "timeout")
            finally:
                resp.close()  # never return a half-read connection to the pool; closing also stops the engine
        finally:
            replica.in_flight -= 1
            self.router.finish(decision, verdict)

    async def _open(self, replica: Replica, path: str, body: bytes) -> UpstreamResponse:
        try:
            return await self.client.upstream.post(replica.url, path, body, self.cfg.first_byte_timeout)
        except TimeoutError:
            raise UpstreamTimeout(
                f"replica {replica.id} sent no response within {self.cfg.first_byte_timeout:.0f}s"
            ) from None
        except UpstreamIOError as exc:
            # Nothing came back, so the engine never answered this request: safe to send again (a stale
            # keep-alive connection is the usual case).
            if isinstance(exc, ConnectFailed):
                replica.mark(False, str(exc)[:200])
            raise UpstreamUnavailable(f"replica {replica.id} could not be reached: {exc}", retry_after=1) from None


def _read_scheduling_headers(scope: dict[str, Any], outcome: RequestOutcome) -> None:
    for key, value in scope["headers"]:
        if key == b"x-fleetgate-priority":
            outcome.priority_header = bytes(value).decode("latin-1").strip().lower()
        elif key == b"x-session-id":
            outcome.session = bytes(value).decode("latin-1").strip() or None
        elif key == b"x-fleetgate-queue-timeout":
            try:
                outcome.queue_timeout = max(0.0, float(bytes(value)))
            except ValueError:
                raise InvalidRequest("x-fleetgate-queue-timeout must be a number of seconds") from None


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _route_headers(rid: str, decision: RouteDecision, adapter_load: str | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-request-id", rid.encode()),
        (b"x-fleetgate-replica", decision.replica.id.encode()),
        (b"x-fleetgate-route", f"{decision.policy}:{decision.reason}".encode()),
    ]
    if adapter_load is not None:
        headers.append((b"x-fleetgate-adapter-load", adapter_load.encode()))
    return headers
