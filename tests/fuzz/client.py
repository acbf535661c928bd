"""A plain blocking HTTP client for the fuzz tests, and the checks every answer of the gateway must pass.

Each request gets its own connection (a refused request may leave a keep-alive connection unusable, and one bad
example must not fail the next), a source address of the test's choosing (the gateway limits failed
authentications per address: junk keys are sent from 127.0.0.2 so they cannot lock out the valid keys sent from
127.0.0.1), and a bound: an answer not complete within HANG_SECONDS is a hang, reported as such.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any

# A request the fake engine serves in milliseconds; anything near this bound is stuck, not slow.
HANG_SECONDS = 15.0
TRUSTED_SOURCE = "127.0.0.1"
HOSTILE_SOURCE = "127.0.0.2"  # junk credentials come from here (see the module docstring)


@dataclass
class Answer:
    """One response, read whole."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes
    sent: bytes | None = None
    sent_headers: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON (fails the test, showing the request, when it is not)."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"{self.describe()}: body is not JSON: {self.body[:300]!r}") from None

    def describe(self) -> str:
        """The request and answer, short enough for a failure message (keys are never shown)."""
        shown = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.sent_headers.items()}
        body = self.sent if self.sent is None or len(self.sent) <= 600 else self.sent[:600] + b"...(cut)"
        return f"{self.method} {self.path} headers={shown} body={body!r} -> {self.status}"


def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, Any] | None = None,
    *,
    source: str = TRUSTED_SOURCE,
    chunk: int | None = None,
    repeated: list[tuple[str, Any]] | None = None,
) -> Answer:
    """Send one request on a fresh connection; raise AssertionError when the gateway hangs.

    `chunk`: send the body with chunked transfer encoding, in pieces of this many bytes. `repeated`: header lines
    sent after `headers`, even when a name is already there (a second Authorization, say)."""
    sent_headers = dict(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_SECONDS, source_address=(source, 0))
    began = time.monotonic()
    try:
        _request(conn, method, path, body, sent_headers, chunk, repeated or [])
        resp = conn.getresponse()
        answer = Answer(method, path, resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"")
        answer.sent, answer.sent_headers = body, sent_headers
        answer.body = _read_all(resp, began, answer)
    except TimeoutError:
        raise AssertionError(f"hang: no complete answer within {HANG_SECONDS:g} s to {method} {path}") from None
    finally:
        conn.close()
    return answer


def _read_all(resp: http.client.HTTPResponse, began: float, answer: Answer) -> bytes:
    """The whole body; a stream still going after 2 x HANG_SECONDS is a hang too (every read came, the end never)."""
    parts: list[bytes] = []
    while piece := resp.read1(65536) if not resp.isclosed() else b"":
        parts.append(piece)
        if time.monotonic() - began > 2 * HANG_SECONDS:
            raise AssertionError(f"hang: {answer.describe()} still streaming after {2 * HANG_SECONDS:g} s")
    return b"".join(parts)


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, Any],
    chunk: int | None,
    repeated: list[tuple[str, Any]],
) -> None:
    """http.client's request(), spelled out so a header may repeat and a body may go out chunked."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    names = {name.lower() for name in headers} | {name.lower() for name, _ in repeated}
    if body is not None and chunk is None and "content-length" not in names:
        conn.putheader("Content-Length", str(len(body)))
    if body is not None and chunk is not None:
        conn.putheader("Transfer-Encoding", "chunked")
    for name, value in [*headers.items(), *repeated]:
        conn.putheader(name, value)
    conn.endheaders()
    if body is None:
        return
    if chunk is None:
        conn.send(body)
        return
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")


def assert_openai_error(answer: Answer) -> dict[str, Any]:
    """The body is `{"error": {"message": str, "type": str, "param": str|None, "code": str}}`."""
    payload = answer.json()
    where = answer.describe()
    assert isinstance(payload, dict) and isinstance(payload.get("error"), dict), f"{where}: not an OpenAI error"
    error: dict[str, Any] = payload["error"]
    assert isinstance(error.get("message"), str) and error["message"], f"{where}: error.message {error}"
    assert isinstance(error.get("type"), str) and error["type"], f"{where}: error.type {error}"
    assert "param" in error and (error["param"] is None or isinstance(error["param"], str)), (
        f"{where}: error.param {error}"
    )
    assert isinstance(error.get("code"), str) and error["code"], f"{where}: error.code must be a string: {error}"
    return error


def assert_no_server_error(answer: Answer) -> None:
    """Below 500, and when refused, refused in OpenAI's shape."""
    assert answer.status < 500, f"server error: {answer.describe()}: {answer.body[:500]!r}"
    if answer.status >= 400:
        assert answer.headers.get("content-type", "").startswith("application/json"), (
            f"{answer.describe()}: error with content-type {answer.headers.get('content-type')!r}"
        )
        assert_openai_error(answer)


def sse_data(body: bytes) -> list[str]:
    """The data lines of an SSE body, in order."""
    lines = body.decode("utf-8", errors="strict").split("\n")
    return [line[len("data:") :].strip() for line in lines if line.startswith("data:")]


def assert_completion_answer(answer: Answer, *, stream: bool) -> None:
    """What a completion request may get back: an OpenAI error, a JSON completion, or a stream that ends properly."""
    assert_no_server_error(answer)
    if answer.status >= 400:
        return
    assert answer.status == 200, f"{answer.describe()}: unexpected status"
    content_type = answer.headers.get("content-type", "")
    if not stream:
        assert content_type.startswith("application/json"), f"{answer.describe()}: content-type {content_type!r}"
        payload = answer.json()
        assert isinstance(payload, dict) and isinstance(payload.get("choices"), list), answer.describe()
        return
    assert content_type.startswith("text/event-stream"), f"{answer.describe()}: content-type {content_type!r}"
    events = sse_data(answer.body)
    assert events, f"{answer.describe()}: empty stream"
    for data in events[:-1]:
        chunk = json.loads(data)
        assert isinstance(chunk, dict), f"{answer.describe()}: event {data[:200]!r}"
    last = events[-1]
    if last == "[DONE]":
        return
    # A stream that cannot end normally ends with an error event in OpenAI's shape.
    assert_openai_error(Answer(answer.method, answer.path, 200, {}, last.encode(), answer.sent, answer.sent_headers))
