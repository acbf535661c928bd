"""Forward: route, prepare the body in the engine's dialect, send it, relay the answer; retry only before any byte
reached the client."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import orjson

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import ApiError, InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from fleetgate.engines.registry import adapter_for
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica
from fleetgate.fleet.upstream import ConnectFailed, UpstreamIOError, UpstreamResponse
from fleetgate.http.asgi import ASGISend
from fleetgate.lora.catalog import Adapter
from fleetgate.lora.pool import AdapterPool
from fleetgate.routing.request import route_request_from
from fleetgate.routing.router import FeedbackRouter, RouteDecision, RouteRequest
from fleetgate.serving.engine_errors import client_error_of
from fleetgate.serving.outcome import ENDPOINT_PATHS, RequestOutcome
from fleetgate.serving.relay import OnComplete, relay_stream, relay_whole

log = logging.getLogger(__name__)

_NO_ADAPTER = nullcontext()  # stateless: one for every request without an adapter
# Engine answers that say nothing about the request itself: another replica (or the same one, anew) may serve it.
_RETRYABLE = frozenset({401, 403, 408, 429})
Decisions = Callable[[str, str, str, str, str], None]  # (request id, tenant, model, replica, route): the dashboard


@dataclass(slots=True)
class Job:
    """What forwarding needs of an admitted request."""

    payload: dict[str, Any]
    serving: list[Replica]
    max_output_tokens: int | None  # the policy's limit, written as the engine's only length field


class Forwarder:
    """Sends an admitted request to a replica and relays the answer; an ApiError out of here reached no client."""

    def __init__(
        self,
        cfg: GatewayConfig,
        router: FeedbackRouter,
        client: EngineClient,
        adapters: AdapterPool | None,
        begin: Callable[[RequestOutcome, Replica, dict[str, Any]], None],
        on_complete: OnComplete,
    ) -> None:
        self.cfg = cfg
        self.router = router
        self.client = client  # its upstream pool exists once the app started
        self.adapters = adapters
        self.begin = begin  # writes the start record (may refuse: the outbox cannot take it)
        self.on_complete = on_complete  # writes the finish record before the client's last byte
        self.decisions: Decisions | None = None

    async def forward(self, job: Job, outcome: RequestOutcome, send: ASGISend) -> None:
        """Try replicas until one answers; send the last error when none does (before any byte went out)."""
        client_wants_usage = self._force_usage(job.payload, outcome)
        lora = outcome.lora
        route_request = route_request_from(  # built once: a retry must not hash the prompt again
            job.payload,
            outcome.tenant_id,
            outcome.session,
            est_tokens=outcome.est_prompt_tokens,
            adapter=lora.name if lora is not None else None,
            model=outcome.model,
        )
        bodies: dict[str, bytes] = {}  # per engine kind, built once each
        tried: set[str] = set()
        last_error: ApiError | None = None  # built only when needed: most requests never fail
        for attempt in range(self.cfg.retries + 1):
            decision = self._route(route_request, job.serving, tried)
            if decision is None:
                break
            tried.add(decision.replica.id)
            body = self._body(bodies, decision.replica, job, outcome)
            self._note(decision, outcome, attempt)
            if not outcome.begun:
                self.begin(outcome, decision.replica, job.payload)
                outcome.begun = True
            try:
                await self._attempt(decision, body, outcome, send, client_wants_usage)
                return
            except ApiError as exc:
                last_error = exc
                log.warning("request %s: attempt %d on %s failed: %s", outcome.request_id, attempt + 1,
                            decision.replica.id, exc.message)  # fmt: skip
                if attempt < self.cfg.retries:
                    await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # jitter: no thundering herd
        raise last_error or UpstreamUnavailable(
            f"no healthy replica serves `{outcome.model}` right now; retry shortly", retry_after=2
        )

    @staticmethod
    def _force_usage(payload: dict[str, Any], outcome: RequestOutcome) -> bool:
        """Every stream must end with the engine's usage chunk (it is what we bill); True if the client asked."""
        if not outcome.stream:
            return False
        options = payload.get("stream_options") or {}
        payload["stream_options"] = {**options, "include_usage": True}
        return bool(options.get("include_usage"))

    def _body(self, bodies: dict[str, bytes], replica: Replica, job: Job, outcome: RequestOutcome) -> bytes:
        body = bodies.get(replica.kind)
        if body is None:
            prepared = adapter_for(replica.kind).prepare(job.payload, outcome.tenant_id, job.max_output_tokens)
            try:
                body = bodies[replica.kind] = orjson.dumps(prepared)
            except (TypeError, orjson.JSONEncodeError) as exc:  # parse_request bounds nesting; this is the backstop
                raise InvalidRequest(f"request body cannot be forwarded: {exc}") from None
        return body

    def _note(self, decision: RouteDecision, outcome: RequestOutcome, attempt: int) -> None:
        outcome.attempts = attempt + 1
        outcome.replica = decision.replica
        # The header carries the full reason; the metric label only its kind, so cardinality stays bounded.
        outcome.route = f"{decision.policy}:{decision.reason.partition(':')[0]}"
        if self.decisions is not None:
            reason = f"{decision.policy}:{decision.reason}"
            self.decisions(outcome.request_id, outcome.tenant_name, outcome.model, decision.replica.id, reason)

    def _route(self, request: RouteRequest, serving: list[Replica], tried: set[str]) -> RouteDecision | None:
        healthy = [r for r in serving if r.healthy]
        fresh = [r for r in healthy if r.id not in tried]
        # A stale keep-alive connection is the usual failure: the same replica is fine for a second try.
        candidates = fresh or healthy
        if not candidates:
            return None
        return self.router.pick(request, candidates)

    async def _attempt(
        self, decision: RouteDecision, body: bytes, outcome: RequestOutcome, send: ASGISend, client_wants_usage: bool
    ) -> None:
        lora, pool = outcome.lora, self.adapters
        # An adapter in use on a replica is never unloaded there, from before its load until the last byte.
        with _NO_ADAPTER if lora is None or pool is None else pool.using(decision.replica, lora.name):
            await self._exchange(decision, body, outcome, send, client_wants_usage)

    async def _exchange(
        self, decision: RouteDecision, body: bytes, outcome: RequestOutcome, send: ASGISend, client_wants_usage: bool
    ) -> None:
        lora = outcome.lora
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
                verdict = await self._check_status(resp, replica, lora)
                headers = self._headers(outcome, decision)
                verdict = None  # from here a client hang-up says nothing about the replica
                if resp.status != 200 or not outcome.stream:
                    await relay_whole(resp, outcome, send, headers, self.on_complete)
                else:
                    await relay_stream(resp, outcome, send, headers, client_wants_usage, self.on_complete)
                verdict = outcome.status not in ("engine_error", "timeout")
            finally:
                resp.close()  # never return a half-read connection to the pool; closing also stops the engine
        finally:
            replica.in_flight -= 1
            self.router.finish(decision, verdict)

    async def _check_status(self, resp: UpstreamResponse, replica: Replica, lora: Adapter | None) -> bool | None:
        """Raise (to retry elsewhere) for answers that are about the replica, not the request."""
        if resp.status == 404 and lora is not None:
            # The engine no longer has the adapter (unloaded by another gateway, or restarted): forget it there and
            # try again, which loads it anew; the client never sees the engine's 404.
            replica.adapters = replica.adapters - {lora.name}
            raise UpstreamError(f"replica {replica.id} had lost LoRA adapter `{lora.name}`")
        if resp.status >= 500 or resp.status in _RETRYABLE:
            raise client_error_of(resp.status, (await resp.read())[:4096], replica.id)
        return False

    def _headers(self, outcome: RequestOutcome, decision: RouteDecision) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", outcome.request_id.encode())]
        if self.cfg.expose_route_headers:  # topology is the operator's to show, not every client's to map
            headers.append((b"x-fleetgate-replica", decision.replica.id.encode()))
            headers.append((b"x-fleetgate-route", f"{decision.policy}:{decision.reason}".encode()))
            if outcome.adapter_load is not None:
                headers.append((b"x-fleetgate-adapter-load", outcome.adapter_load.encode()))
        return headers

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
