"""The hot path: one completion request, as four stages over one outcome, inside the one exception boundary.

    admit   (serving/admit.py)    auth -> body -> policy -> limits -> queue        a Ticket, or a refusal
    forward (serving/forward.py)  route -> engine dialect -> upstream, retries     before any byte: retry
    relay   (serving/relay.py)    the engine's answer, passed through as it comes  usage taken on the way
    record  (serving/record.py)   finish record, I/O log, settle limits, metrics   always, exactly once

The boundary is where the outcome is recorded: whatever ends the request (a refusal, an engine failure, the client
leaving, the request's deadline, a bug of ours), `handle` turns it into a status first and records after, so the
ledger never says `ok` for an answer the client did not get. docs/billing.md has the table of what each bills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import ApiError, UpstreamError, UpstreamTimeout
from fleetgate.domain.ids import request_id
from fleetgate.domain.usage import NO_USAGE
from fleetgate.http.asgi import ASGIReceive, ASGISend, ClientGone, send_error
from fleetgate.serving.admit import Admitter, Ticket
from fleetgate.serving.ending import Ending
from fleetgate.serving.forward import Forwarder, Job
from fleetgate.serving.outcome import Endpoint, RequestOutcome
from fleetgate.serving.record import Recorder
from fleetgate.serving.relay import Disconnected, end_stream_with_error

log = logging.getLogger(__name__)


class CompletionHandler:
    """Serves `/v1/chat/completions` and `/v1/completions`."""

    def __init__(self, cfg: GatewayConfig, admitter: Admitter, forwarder: Forwarder, recorder: Recorder) -> None:
        self.cfg = cfg
        self.admitter = admitter
        self.forwarder = forwarder
        self.recorder = recorder
        self.in_flight = 0

    async def handle(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend, endpoint: Endpoint) -> None:
        """Serve one request; every way it can end is recorded here, once."""
        outcome = RequestOutcome(request_id(), endpoint)
        ticket: Ticket | None = None
        self.in_flight += 1
        try:
            ticket = await self.admitter.admit(scope, receive, outcome)
            await self._serve(ticket, outcome, scope, receive, send)
        except ApiError as err:
            await self._refuse(outcome, err, send)
        except ClientGone:
            # Left while its request was still being read: nothing was reserved or served, nothing to bill.
            outcome.fail("client_abort", 499)
            outcome.recorded = True
        except Exception:
            log.exception("request %s: unexpected error in the gateway", outcome.request_id)
            outcome.fail("gateway_error", 500)
            await self._answer(outcome, send, ApiError("internal error in the gateway; it is logged"))
        finally:
            self.in_flight -= 1
            self.admitter.release(ticket)
            await self.recorder.finish(outcome, ticket.admission if ticket is not None else None)

    async def _serve(
        self, ticket: Ticket, outcome: RequestOutcome, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        """Queue and forward, hearing the client leave, within the request's deadline."""
        ending = Ending(outcome)
        ending.start(scope, receive, self.cfg.max_request_seconds)
        try:
            await self.admitter.queue(ticket, outcome)
            job = Job(ticket.payload, ticket.serving, ticket.admission.decision.max_output_tokens)
            await self.forwarder.forward(job, outcome, send)
        except asyncio.CancelledError:
            if ending.reason is None:
                raise  # not ours: the server is shutting down
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if ending.reason == "client_left":
                outcome.fail("client_abort", 499 if not outcome.response_started else outcome.http_status)
            else:
                await self._deadline_passed(outcome, send)
        except Disconnected:
            outcome.fail("client_abort", 499 if not outcome.response_started else outcome.http_status)
        finally:
            ending.stop()

    async def _deadline_passed(self, outcome: RequestOutcome, send: ASGISend) -> None:
        outcome.fail("timeout", 504 if not outcome.response_started else outcome.http_status)
        seconds = self.cfg.max_request_seconds
        await self._answer(
            outcome, send, UpstreamTimeout(f"the request ran longer than {seconds:.0f}s and was stopped")
        )

    async def _refuse(self, outcome: RequestOutcome, err: ApiError, send: ASGISend) -> None:
        # Refused by the gateway or failed by every replica: the status says whose doing it was.
        status = {502: "engine_error", 503: "engine_error", 504: "timeout"}.get(err.status, "rejected")
        if not outcome.begun:
            status = "rejected"
        elif not outcome.response_started:
            outcome.usage = NO_USAGE  # every replica failed it before a byte came back: not the tenant's doing
        outcome.fail(status, err.status)  # type: ignore[arg-type]
        self.recorder.refused(outcome, err.reason)
        await self._answer(outcome, send, err)

    async def _answer(self, outcome: RequestOutcome, send: ASGISend, err: ApiError) -> None:
        """Tell the client: an error response, or an error event if its stream already started."""
        with contextlib.suppress(Disconnected, OSError, RuntimeError):
            if outcome.response_started:
                await end_stream_with_error(send, UpstreamError(err.message))
            else:
                outcome.response_started = True
                await send_error(send, err, outcome.request_id)
