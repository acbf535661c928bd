"""Every public endpoint besides the completions, with junk query strings, path parameters, credentials and
methods: every answer below 500, errors in OpenAI's shape, successes in the endpoint's own content type."""

from __future__ import annotations

import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.client import HOSTILE_SOURCE, Answer, assert_no_server_error, send
from tests.fuzz.conftest import FUZZ_KEY, METRICS_TOKEN, FuzzGateway
from tests.fuzz.strategies import authorizations, header_values
from tests.keys import ADMIN_KEY, DEMO_KEY

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Path templates; `{}` takes a generated path segment.
PATHS = [
    "/v1/models",
    "/v1/usage",
    "/v1/logs",
    "/v1/logs/{}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/dashboard",
    "/dashboard/static/{}",
    "/dashboard/api/overview",
    "/dashboard/api/tenant",
    "/v1/{}",
    "/{}",
    "/v1/chat/completions",
    "/v1/completions",
    "/admin/openapi.json",
    "/admin/{}",
]
PARAMS = ["since", "until", "limit", "before", "after", "tenant", "model", "price_book", "format", "x"]
PARAM_VALUES = ["", "0", "-1", "1001", "2**64", "18446744073709551616", "1e309", "nan", "2026-13-45", "9999-12-31"]
PARAM_VALUES += ["0001-01-01", "2026-01-01T00:00:00", "2026-02-30", "../..", "%00", "\u0000", "🙂", "a" * 3000]
# Keys that open endpoints: sent from the trusted address only where they open it (failures count per address).
GOOD_KEYS = {"tenant": FUZZ_KEY, "demo": DEMO_KEY, "admin": ADMIN_KEY, "metrics": METRICS_TOKEN}
# What a 2xx answer of each path must be (anything else answers JSON).
CONTENT_TYPES = {"/dashboard": "text/html", "/metrics": "text/plain"}


def segments() -> st.SearchStrategy[str]:
    """A path segment, percent-encoded so the request line stays well framed."""
    raw = st.one_of(
        st.sampled_from(["dashboard.js", "dashboard.css", "..", "%2e%2e", "x" * 2000, "models", "", "0"]),
        st.text(max_size=40),
    )
    return raw.map(lambda s: urllib.parse.quote(s, safe="%"))


def queries() -> st.SearchStrategy[str]:
    """A query string: known parameters with junk values, repeated ones, or undecodable percent escapes."""
    pairs = st.lists(
        st.tuples(st.sampled_from(PARAMS), st.one_of(st.sampled_from(PARAM_VALUES), st.text(max_size=20))),
        max_size=4,
    )
    encoded = pairs.map(lambda p: urllib.parse.urlencode(p))
    return st.one_of(encoded, encoded, st.sampled_from(["%ff%fe", "since=%ff", "limit=%00", "&&&=", "a=1&a=2", "="]))


def credentials() -> st.SearchStrategy[bytes | None]:
    """Authorization headers: every good key (sent to any endpoint, so mostly the wrong one), or junk."""
    good = st.sampled_from(sorted(GOOD_KEYS.values())).map(lambda k: f"Bearer {k}".encode())
    return st.one_of(good, good, authorizations())


def check_answer(answer: Answer) -> None:
    """Below 500; an OpenAI error when refused; a success in the content type its path serves."""
    if answer.method == "HEAD":  # no body to check
        assert answer.status < 500, f"server error: {answer.describe()}"
        return
    assert_no_server_error(answer)
    if answer.status >= 300:
        return
    path = answer.path.split("?", 1)[0]
    expected = "text/" if path.startswith("/dashboard/static/") else CONTENT_TYPES.get(path, "application/json")
    content_type = answer.headers.get("content-type", "")
    assert content_type.startswith(expected), f"{answer.describe()}: content-type {content_type!r}, not {expected}"
    if expected == "application/json":
        answer.json()


# Each endpoint with the credentials that open it, so most requests reach its handler with their junk parameters.
OPENED_BY = {
    "/v1/models": ("tenant", "demo"),
    "/v1/usage": ("tenant", "demo"),
    "/v1/logs": ("tenant", "demo"),
    "/v1/logs/{}": ("tenant",),
    "/dashboard/api/tenant": ("tenant", "demo"),
    "/dashboard/api/overview": ("admin",),
    "/metrics": ("admin", "metrics"),
    "/healthz": ("none",),
    "/readyz": ("none",),
    "/dashboard": ("none",),
    "/dashboard/static/{}": ("none",),
}


@st.composite
def opened_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A GET of an endpoint with credentials that open it, a junk path segment and query."""
    template = draw(st.sampled_from(sorted(OPENED_BY)))
    who = draw(st.sampled_from(OPENED_BY[template]))
    path = template.replace("{}", draw(segments()))
    query = draw(queries())
    headers = {} if who == "none" else {"Authorization": f"Bearer {GOOD_KEYS[who]}"}
    return path + (f"?{query}" if query else ""), headers


@settings(FUZZ, max_examples=300)
@given(request=opened_requests())
def test_endpoints_with_their_credentials(fuzz_gateway: FuzzGateway, request: tuple[str, dict[str, Any]]) -> None:
    path, headers = request
    check_answer(send(fuzz_gateway.port, "GET", path, None, headers))


@settings(FUZZ, max_examples=250)
@given(
    template=st.sampled_from(PATHS),
    segment=segments(),
    query=queries(),
    method=st.sampled_from(["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]),
    authorization=credentials(),
    extra=st.fixed_dictionaries(
        {}, optional={"x-request-id": header_values(), "accept": header_values(), "content-type": header_values()}
    ),
)
def test_any_endpoint_method_and_credentials(
    fuzz_gateway: FuzzGateway,
    template: str,
    segment: str,
    query: str,
    method: str,
    authorization: bytes | None,
    extra: dict[str, Any],
) -> None:
    path = template.replace("{}", segment) + (f"?{query}" if query else "")
    headers = dict(extra)
    if authorization is not None:
        headers["Authorization"] = authorization
    body = b'{"junk": true}' if method in ("POST", "PUT", "PATCH") else None
    # From the hostile address: a good key sent where it does not open counts as a failed authentication.
    check_answer(send(fuzz_gateway.port, method, path, body, headers, source=HOSTILE_SOURCE))


def test_io_log_of_fuzzed_requests(fuzz_gateway: FuzzGateway) -> None:
    """The fuzz tenant logs its bodies: every served hostile request (deep, huge, odd unicode) was stored, and each
    stored record reads back."""
    iolog = fuzz_gateway.gw.gateway.iolog
    assert fuzz_gateway.call(iolog.flush(30.0)), "the I/O log did not write its queue"
    assert (iolog.dropped, iolog.write_errors) == (0, 0), "I/O log records were lost"
    tenant = {"Authorization": f"Bearer {FUZZ_KEY}"}
    listed = send(fuzz_gateway.port, "GET", "/v1/logs?limit=100", None, tenant)
    check_answer(listed)
    served = [s.request_id for s in fuzz_gateway.journal if s.request_id is not None and s.status == 200]
    ids = {str(r["request_id"]) for r in listed.json().get("data", []) if isinstance(r, dict)}
    for request_id in [*served[:300], *sorted(ids - set(served))]:
        answer = send(fuzz_gateway.port, "GET", f"/v1/logs/{urllib.parse.quote(request_id)}", None, tenant)
        check_answer(answer)
        assert answer.status == 200, f"{answer.describe()}: the log record of a served request is missing"
