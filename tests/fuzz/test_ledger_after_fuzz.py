"""After the fuzz: the ledger equals what the engines did, nothing is left held, and no engine got what the tenant
may not send. Runs last in the package (file order), over every completion request the fuzz tests journaled; it
sends a small batch of its own first, so it checks something when run alone too.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from fleetgate.engines.registry import adapter_for
from fleetgate.metering.events import UsageEvent
from fleetgate.tenancy.models import Tenant
from tests.fuzz.client import assert_completion_answer, send
from tests.fuzz.conftest import FUZZ_KEY, FUZZ_TENANT, OUTPUT_CAP, FuzzGateway
from tests.fuzz.strategies import Deep, serialise
from tests.waiting import wait_until

HI = [{"role": "user", "content": "hi"}]
OWN_BATCH: list[tuple[str, dict[str, Any] | bytes]] = [
    ("/v1/chat/completions", {"model": "fake", "messages": HI, "stream": True, "max_tokens": 5}),
    ("/v1/chat/completions", {"model": "fake", "messages": HI, "n_predict": -1}),
    ("/v1/completions", {"model": "fake", "prompt": [1, 2, 3], "stream": True, "id_slot": 1}),
    ("/v1/chat/completions", {"model": "fake", "messages": HI, "temperature": "hot"}),  # the engine refuses it
    ("/v1/chat/completions", {"model": "fake", "messages": HI, "max_tokens": 0}),  # the gateway refuses it
    ("/v1/chat/completions", {"model": "fake", "messages": HI, "tools": Deep(300)}),
    ("/v1/completions", b"{not json"),
]
SETTLE_SECONDS = 60.0


def _send_own_batch(fuzz: FuzzGateway) -> None:
    for path, body in OWN_BATCH:
        raw = body if isinstance(body, bytes) else serialise(body)
        stream = isinstance(body, dict) and body.get("stream") is True
        answer = send(fuzz.port, "POST", path, raw, {"Authorization": f"Bearer {FUZZ_KEY}"})
        fuzz.note(answer, stream=stream)
        assert_completion_answer(answer, stream=stream)


async def _tenant(fuzz: FuzzGateway) -> Tenant:
    tenant = await fuzz.gw.gateway.store.get_tenant(FUZZ_TENANT)
    assert tenant is not None
    return tenant


async def _ledger_rows(fuzz: FuzzGateway, tenant_id: str) -> dict[str, UsageEvent]:
    rows: dict[str, UsageEvent] = {}
    after = None
    while True:
        page = await fuzz.gw.gateway.ledger.events(tenant_id=tenant_id, limit=1000, after=after)
        rows.update((e.event_id, e) for e in page.events)
        if page.next_cursor is None:
            return rows
        after = page.next_cursor


def _settled(fuzz: FuzzGateway, tenant_id: str, wanted: set[str]) -> dict[str, UsageEvent]:
    """Every journaled request's ledger row, once the outbox has been delivered (bounded wait on the rows)."""
    found: dict[str, UsageEvent] = {}
    capture = fuzz.gw.gateway.capture

    async def delivered() -> bool:
        found.update(await _ledger_rows(fuzz, tenant_id))
        # No finish record still waiting for a prompt count, no start record without its finish.
        return wanted <= found.keys() and not capture._tasks and not capture._inflight

    async def wait() -> None:
        await wait_until(delivered, timeout=SETTLE_SECONDS, what="every fuzzed request's ledger row")

    try:
        fuzz.call(wait(), timeout=SETTLE_SECONDS + 10)
    except TimeoutError:
        missing = sorted(wanted - found.keys())
        flusher = fuzz.gw.gateway.flusher
        answers = Counter((s.status, s.stream) for s in fuzz.journal if s.request_id in missing)
        raise AssertionError(
            f"{len(missing)} requests have no ledger row (first: {missing[:3]}, answers {dict(answers)});"
            f" capture holds {len(capture._inflight)} open starts and {len(capture._tasks)} pending finishes;"
            f" flusher: last error {flusher.last_error!r}, {flusher.pass_failures} failed passes,"
            f" dead-lettered {flusher.dead_lettered}"
        ) from None
    return found


def test_ledger_equals_the_engines_after_the_fuzz(fuzz_gateway: FuzzGateway) -> None:
    _send_own_batch(fuzz_gateway)
    fuzz = fuzz_gateway
    tenant = fuzz.call(_tenant(fuzz))
    journal = list(fuzz.journal)
    identified = {s.request_id: s for s in journal if s.request_id is not None}
    rows = _settled(fuzz, tenant.id, set(identified))
    print(f"fuzz journal: {len(journal)} requests, answers {sorted(Counter(s.status for s in journal).items())}")

    # The fuzz key is only ever sent from an address with no failed authentications, under no rate limit.
    refused = Counter(s.status for s in journal if s.status in (401, 429))
    assert not refused, f"the fuzz tenant's valid key was refused: {dict(refused)}"
    # One row per request, and its outcome is the one the client saw.
    unanswered = len(journal) - len(identified)
    assert len(rows.keys() - identified.keys()) <= unanswered, "ledger rows for requests no client was answered for"
    wrong = [
        (rid, s.status, rows[rid].status)
        for rid, s in identified.items()
        if (s.status == 200) != (rows[rid].status == "ok")
    ]
    assert not wrong, f"ledger outcome differs from the answer (request, status, ledger): {wrong[:5]}"

    # What the ledger bills equals what the engines reported, request for request.
    ok = [e for e in rows.values() if e.status == "ok"]
    reported = Counter[str]()
    for engine in fuzz.engines:
        reported.update(engine.reported)
    assert {e.usage_source for e in ok} <= {"engine"}, Counter(e.usage_source for e in ok)
    billed = {
        "blocks": len(ok),
        "prompt_tokens": sum(e.prompt_tokens for e in ok),
        "completion_tokens": sum(e.completion_tokens for e in ok),
        "cached_tokens": sum(e.cached_tokens for e in ok),
    }
    assert billed == {k: reported.get(k, 0) for k in billed}, f"ledger {billed} != engines {dict(reported)}"
    assert len(ok) == sum(e.served for e in fuzz.engines), "an ok row for a request no engine served"
    charged = [(e.event_id, e.status, e.prompt_tokens, e.completion_tokens) for e in rows.values() if e.status != "ok"]
    assert all(p == c == 0 for _, _, p, c in charged), f"tokens on refused requests: {charged[:5]}"

    _assert_nothing_held(fuzz, tenant)
    _assert_usage_report_agrees(fuzz, billed, len(rows))
    _assert_engines_got_only_allowed_bodies(fuzz, tenant.id)


def _assert_nothing_held(fuzz: FuzzGateway, tenant: Tenant) -> None:
    gateway = fuzz.gw.gateway
    counters = fuzz.call(gateway.gate.limiter.counters(tenant.id, tenant.limits))
    assert counters.in_flight == 0, f"the tenant still holds {counters.in_flight} concurrency slots"
    assert gateway.completions.in_flight == 0
    assert gateway.admission is None or gateway.admission.admitted("fake") == 0, "admission slots leaked"
    assert all(r.in_flight == 0 for r in gateway.registry.all()), "replica in-flight counts leaked"


def _assert_usage_report_agrees(fuzz: FuzzGateway, billed: dict[str, int], rows: int) -> None:
    """The daily roll-ups (what `/v1/usage` and invoices read) equal the events; the budget counter their charge."""
    answer = send(fuzz.port, "GET", "/v1/usage", None, {"Authorization": f"Bearer {FUZZ_KEY}"})
    assert answer.status == 200, answer.describe()
    totals = answer.json()["totals"]
    assert (totals["requests"], totals["ok"]) == (rows, billed["blocks"]), totals
    assert totals["prompt_tokens"] == billed["prompt_tokens"], totals
    assert totals["output_tokens"] == billed["completion_tokens"], totals
    assert totals["cached_tokens"] == billed["cached_tokens"], totals
    tenant = fuzz.call(_tenant(fuzz))
    counters = fuzz.call(fuzz.gw.gateway.gate.limiter.counters(tenant.id, tenant.limits))
    assert abs(counters.spend_micros - totals["charge_micros"]) <= 1, (counters.spend_micros, totals)


def _assert_engines_got_only_allowed_bodies(fuzz: FuzzGateway, tenant_id: str) -> None:
    """No body an engine got carries a field its dialect does not take from tenants (only what the gateway itself
    writes: the policy's output limit, the cache salt, the dialect's stream fields), or asks for more than the caps."""
    for engine in fuzz.engines:
        dialect = adapter_for(engine.owned_by or "openai")  # type: ignore[arg-type]
        own = dict(getattr(dialect, "stream_fields", ()))  # the gateway's own fields, with its own values
        allowed = dialect.request_fields | {"max_tokens", "cache_salt"} | own.keys()
        for body in engine.bodies:
            shown = json.dumps(body)[:300]
            assert set(body) <= allowed, f"{engine.owned_by} got {sorted(set(body) - allowed)}: {shown}"
            if body.get("stream") is True:
                assert {k: body.get(k) for k in own} == own, shown
            assert isinstance(body.get("max_tokens"), int) and 1 <= body["max_tokens"] <= OUTPUT_CAP, shown
            assert (body.get("n") or 1) in range(1, 17), shown  # null is the default, 1; gateway.max_choices
            if dialect.salts_cache:
                assert str(body.get("cache_salt", "")).startswith(f"fg:{tenant_id}"), shown
