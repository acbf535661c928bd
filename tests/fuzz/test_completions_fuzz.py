"""Hostile completion requests against a real gateway: every answer below 500, in OpenAI's shape, and on time.

Bodies mix valid OpenAI requests with type-confused, out-of-range, engine-native and deeply nested fields; raw bodies
that are no JSON object or too large; junk scheduling headers; and credentials that are no key. What the engines
were sent, and what the ledger made of it all, is checked by test_ledger_after_fuzz.py.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.client import (
    HOSTILE_SOURCE,
    Answer,
    assert_completion_answer,
    assert_no_server_error,
    assert_openai_error,
    send,
    sse_data,
)
from tests.fuzz.conftest import FUZZ_KEY, FuzzGateway
from tests.fuzz.strategies import (
    Deep,
    Request,
    authorizations,
    chat_requests,
    chunks,
    completion_requests,
    raw_bodies,
    scheduling_headers,
    serialise,
)

FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions"])
HI = [{"role": "user", "content": "hi"}]


def _post(fuzz: FuzzGateway, request: Request, headers: dict[str, Any] | None = None) -> None:
    """Send with the fuzz tenant's key, journal the answer, check it."""
    answer = send(
        fuzz.port,
        "POST",
        request.path,
        request.body,
        {"Authorization": f"Bearer {FUZZ_KEY}", **request.headers, **(headers or {})},
        chunk=request.chunk,
    )
    fuzz.note(answer, stream=request.stream)
    assert_completion_answer(answer, stream=request.stream)
    if answer.status == 200 and request.stream:
        _assert_usage_as_asked(answer, json.loads(request.body))


def _assert_usage_as_asked(answer: Answer, body: dict[str, Any]) -> None:
    """The gateway always asks the engine for usage; the client sees the usage event only if it asked for it."""
    options = body.get("stream_options")
    asked = isinstance(options, dict) and bool(options.get("include_usage"))
    events = [json.loads(data) for data in sse_data(answer.body)[:-1]]
    usage = [e for e in events if e.get("usage")]
    assert len(usage) == (1 if asked else 0), f"{answer.describe()}: {len(usage)} usage events, asked: {asked}"


def _chat(body: dict[str, Any]) -> Request:
    return Request(
        "/v1/chat/completions", serialise(body), {"content-type": "application/json"}, body.get("stream") is True
    )


@settings(FUZZ, max_examples=400)
@given(request=chat_requests())
# Issue 17 items 5-7 and 10, as hostile tenants sent them.
@example(request=_chat({"model": "fake", "messages": HI, "n_predict": -1, "stream": True}))
@example(request=_chat({"model": "fake", "messages": HI, "max_tokens": 3, "n_predict": 10}))
@example(request=_chat({"model": "fake", "messages": HI, "id_slot": 0, "lora": [{"id": 0, "scale": 9}]}))
@example(request=_chat({"model": "fake", "messages": HI, "metadata": Deep(255)}))
@example(request=_chat({"model": "fake", "messages": HI, "metadata": Deep(1000, "dict")}))
@example(request=_chat({"model": "fake", "messages": HI, "n": 10**9, "stream": True}))
@example(request=_chat({"model": "fake", "messages": HI, "temperature": "hot"}))
@example(request=_chat({"model": "fake", "messages": HI, "stream": True, "stream_options": None}))
@example(request=_chat({"model": "fake", "messages": HI, "stream": True, "stream_options": {"include_usage": "no"}}))
@example(request=_chat({"model": "fake", "messages": [{"role": "user", "content": 5}], "max_tokens": 2**64}))
def test_chat_bodies(fuzz_gateway: FuzzGateway, request: Request) -> None:
    _post(fuzz_gateway, request)


@settings(FUZZ, max_examples=300)
@given(request=completion_requests())
@example(
    request=Request(
        "/v1/completions",
        serialise({"model": "fake", "prompt": list(range(5000))}),
        {"content-type": "application/json"},
    )
)
@example(
    request=Request(
        "/v1/completions",
        serialise({"model": "fake", "prompt": [[1, 2], "text", [3]], "n": 8, "stream": True}),
        {"content-type": "application/json"},
        stream=True,
    )
)
def test_completion_bodies(fuzz_gateway: FuzzGateway, request: Request) -> None:
    _post(fuzz_gateway, request)


@settings(FUZZ, max_examples=100)
@given(path=PATHS, body=raw_bodies(), chunk=chunks())
def test_raw_bodies(fuzz_gateway: FuzzGateway, path: str, body: bytes, chunk: int | None) -> None:
    _post(fuzz_gateway, Request(path, body, {"content-type": "application/json"}, chunk=chunk))


@settings(FUZZ, max_examples=100)
@given(path=PATHS, stream=st.booleans(), headers=scheduling_headers())
def test_scheduling_headers(fuzz_gateway: FuzzGateway, path: str, stream: bool, headers: dict[str, Any]) -> None:
    body = {"model": "fake", "stream": stream, "max_tokens": 2}
    body.update({"messages": HI} if path.endswith("chat/completions") else {"prompt": "hi"})
    _post(fuzz_gateway, Request(path, serialise(body), {"content-type": "application/json"}, stream), headers)


@settings(FUZZ, max_examples=60)
@given(path=PATHS, authorization=authorizations(), second=st.one_of(st.none(), authorizations()), stream=st.booleans())
def test_junk_credentials(
    fuzz_gateway: FuzzGateway, path: str, authorization: bytes | None, second: bytes | None, stream: bool
) -> None:
    # From another address: failed authentications are limited per address, and must not lock out the fuzz key.
    headers: dict[str, Any] = {"content-type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = serialise({"model": "fake", "messages": HI, "stream": stream})
    repeated = [] if second is None else [("Authorization", second)]
    answer = send(fuzz_gateway.port, "POST", path, body, headers, source=HOSTILE_SOURCE, repeated=repeated)
    assert_no_server_error(answer)
    # Refused by the hot path for the key (401, or 429 once the address failed too often), or by the HTTP parser
    # for a header line it does not accept (400/431 before any handler ran, so no request id).
    handled = "x-request-id" in answer.headers
    assert answer.status in (401, 429) or (answer.status >= 400 and not handled), (
        f"{answer.describe()}: a request without a valid key was not refused for it"
    )


QUEUE_TIMEOUTS = [b"0", b"nan", b"inf", b"-inf", b"1e309", b"1e-300", b"-1", b"0.05"]


def test_queued_requests_with_junk_deadlines(fuzz_gateway: FuzzGateway) -> None:
    """More streams than the fleet has room for (2), each with an odd queue deadline, while the engines are slow:
    the queue's timeouts and ordering run with the values a hostile client sends."""
    fuzz_gateway.set_engines(delay=0.05)
    failures: list[BaseException] = []
    tenant = {"Authorization": f"Bearer {FUZZ_KEY}"}

    def one(index: int) -> None:
        body = {"model": "fake", "messages": HI, "stream": True, "max_tokens": 8}
        headers = {"x-fleetgate-queue-timeout": QUEUE_TIMEOUTS[index % len(QUEUE_TIMEOUTS)]}
        if index % 3 == 0:
            headers["x-fleetgate-priority"] = b"batch"
        request = _chat(body)
        try:
            answer = send(
                fuzz_gateway.port, "POST", request.path, request.body, {**tenant, **request.headers, **headers}
            )
            fuzz_gateway.note(answer, stream=True)
            if answer.status == 503:
                # The fleet is full on purpose and the client asked for a short wait: shed, saying when to retry.
                assert assert_openai_error(answer)["code"] == "overloaded", answer.describe()
                assert "retry-after" in answer.headers, answer.describe()
            else:
                assert_completion_answer(answer, stream=True)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        fuzz_gateway.set_engines(delay=0.0)
    assert not any(t.is_alive() for t in threads), "a queued request never finished"
    assert not failures, failures[0]
