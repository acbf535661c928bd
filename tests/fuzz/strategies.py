"""Hypothesis strategies for hostile completion requests: valid OpenAI bodies with any field swapped for a value
of the wrong type, an out-of-range one, an engine-native control, or JSON nested far past what the gateway allows.

Nesting deeper than Python's json module can write is spliced in as text: a body is built as an object with
`Deep` placeholders, serialised, and each placeholder replaced by `[[[...]]]` or `{"a":{"a":...}}` written out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.conftest import MAX_BODY_BYTES

# Integers at every edge the gateway and its engines care about: signs, 31/32/53/63/64 bits and beyond (orjson
# reads 64-bit integers only), and the output caps of the fuzz tenant.
EDGE_INTS = [0, 1, -1, -2, 3, 15, 16, 17, 255, 4096, 8192, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63)]
EDGE_INTS += [2**64 - 1]
# Values no JSON parser of the gateway's accepts (integers past 64 bits, NaN, lone surrogates): each makes the whole
# body unparsable, so they are drawn rarely, lest they hide every other field from the fuzz.
UNPARSABLE = [2**64, -(2**63) - 1, 10**30, float("nan"), float("inf"), float("-inf"), "\ud800", "a\udfffb"]
EDGE_STRINGS = ["", "1", "16", "-1", "nan", "inf", "1e309", "null", "true", "\u0000", "\u202e", "🙂" * 8, " [DONE]"]
DEPTHS = [2, 64, 126, 127, 128, 129, 200, 253, 254, 255, 256, 500, 1023, 1024, 1025, 3000]


@dataclass(frozen=True)
class Deep:
    """JSON nested `depth` levels deep (a list or an object), written out as text when the body is serialised."""

    depth: int
    kind: str = "list"

    def text(self) -> str:
        """The nested JSON."""
        if self.kind == "list":
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * (self.depth - 1) + "{}" + "}" * (self.depth - 1)


@dataclass
class Request:
    """A completion request to send: path, raw body, extra headers, and whether its answer should be a stream."""

    path: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    chunk: int | None = None  # sent with chunked transfer encoding in pieces of this size

    def chunked(self, chunk: int | None) -> Request:
        """The same request, its body sent in chunks of `chunk` bytes (None: with a Content-Length)."""
        return Request(self.path, self.body, self.headers, self.stream, chunk)

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 400 else self.body[:400] + b"...(%d bytes)" % len(self.body)
        return f"Request({self.path!r}, {body!r}, {self.headers!r}, stream={self.stream}, chunk={self.chunk})"


def serialise(value: Any) -> bytes:
    """JSON text of a body that may hold `Deep` placeholders and non-finite floats (written as NaN/Infinity)."""
    deep: list[Deep] = []

    def placeholder(obj: Any) -> Any:
        if isinstance(obj, Deep):
            deep.append(obj)
            return f"@@deep{len(deep) - 1}@@"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=placeholder, ensure_ascii=False)
    for index, item in enumerate(deep):
        text = text.replace(f'"@@deep{index}@@"', item.text(), 1)
    return text.encode("utf-8", errors="surrogatepass")


def scalars() -> st.SearchStrategy[Any]:
    """Any JSON scalar, edges first."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(EDGE_INTS),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0.5, -0.0, 1e308, -1e-300, 2.0]),
        st.sampled_from(EDGE_STRINGS),
        st.text(max_size=30),
    )


def junk() -> st.SearchStrategy[Any]:
    """Any JSON value the gateway can parse: scalars, and small arrays and objects of them."""
    nested = st.recursive(
        scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=10,
    )
    return nested


def deep_values() -> st.SearchStrategy[Deep]:
    """JSON nested around every depth that matters (the gateway's limit, orjson's write and read limits)."""
    return st.builds(Deep, st.sampled_from(DEPTHS), st.sampled_from(["list", "dict"]))


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn in proportion to its weight (the first is what examples shrink to)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(table) - 1).flatmap(lambda i: table[i])


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right shape, sometimes anything at all."""
    return weighted((2, plausible), (1, junk()))


def texts() -> st.SearchStrategy[str]:
    """Prompt text: short, unicode, or long (and, rarely, lone surrogates: not valid UTF-8 once written)."""
    return st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=80),
        st.text(st.characters(codec="utf-8"), max_size=80),
        st.text(st.characters(codec="utf-8"), max_size=80),
        st.sampled_from(["hi", "[DONE]", "data: [DONE]\n\n", "\r\n\r\n", "x" * 9000, "é" * 5000]),
        st.text(max_size=10),
    )


def token_ids() -> st.SearchStrategy[list[Any]]:
    """Token-id prompts: short, thousands long, or with ids out of range."""
    return st.one_of(
        st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=20),
        st.integers(min_value=1, max_value=6000).map(lambda n: list(range(n))),
        st.lists(st.sampled_from([*EDGE_INTS, True, 1.5, "1"]), min_size=1, max_size=6),
        st.just([]),
    )


def messages() -> st.SearchStrategy[Any]:
    """Chat messages, right and wrong."""
    part = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": either(texts())}),
        st.fixed_dictionaries(
            {"type": st.just("image_url"), "image_url": either(st.just({"url": "data:image/png;base64,AAAA"}))}
        ),
        st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "file", "", "x" * 300])}),
        junk(),
    )
    roles = st.sampled_from(["user", "system", "assistant", "tool", "developer"])
    plain = st.fixed_dictionaries({"role": roles, "content": texts()})
    message = st.fixed_dictionaries(
        {"role": either(roles)},
        optional={
            "content": st.one_of(texts(), st.lists(part, max_size=3), junk()),
            "name": either(st.text(max_size=20)),
            "tool_calls": junk(),
            "tool_call_id": either(st.text(max_size=20)),
        },
    )
    hostile = st.one_of(st.lists(message, min_size=1, max_size=4), st.lists(message, max_size=0), junk())
    return weighted((3, st.lists(plain, min_size=1, max_size=3)), (1, hostile))


def prompts() -> st.SearchStrategy[Any]:
    """Completion prompts in every form (text, batch, token ids, batches of token ids), right and wrong."""
    return st.one_of(
        texts(),
        st.lists(texts(), min_size=1, max_size=4),
        token_ids(),
        st.lists(token_ids(), min_size=1, max_size=3),
        junk(),
    )


LENGTHS = st.sampled_from([-2, -1, 0, 1, 3, 16, 17, 4096, 8191, 8192, 10**6, 2**31, 2**63 - 1])
COUNTS = st.sampled_from([-1, 0, 1, 2, 8, 9, 128, 2**31])
PROBS = st.one_of(st.booleans(), st.sampled_from([-1, 0, 1, 5, 20, 21, 10**9]))


def common_fields() -> dict[str, st.SearchStrategy[Any]]:
    """Optional fields of both endpoints: OpenAI's, and engine-native controls a tenant must not hold."""
    stream_options = st.one_of(
        st.fixed_dictionaries({}, optional={"include_usage": either(st.booleans())}),
        st.fixed_dictionaries({"continuous_usage_stats": either(st.booleans())}),
        junk(),
    )
    return {
        "stream": st.one_of(st.booleans(), st.booleans(), junk()),
        "stream_options": stream_options,
        "max_tokens": either(LENGTHS),
        "max_completion_tokens": either(LENGTHS),
        "n_predict": either(LENGTHS),
        "min_tokens": either(LENGTHS),
        "n": either(COUNTS),
        "best_of": either(COUNTS),
        "logprobs": either(PROBS),
        "top_logprobs": either(PROBS),
        "n_probs": either(PROBS),
        "temperature": either(st.floats(0, 2)),
        "top_p": either(st.floats(0, 1)),
        "seed": either(st.integers(-(2**63), 2**63 - 1)),
        "stop": either(st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4))),
        "user": either(st.text(max_size=40)),
        "logit_bias": either(st.dictionaries(st.text("0123456789", min_size=1, max_size=5), st.integers(-100, 100))),
        "tools": either(st.just([{"type": "function", "function": {"name": "f", "parameters": {}}}])),
        "response_format": either(st.sampled_from([{"type": "json_object"}, {"type": "text"}])),
        "id_slot": either(st.sampled_from([-1, 0, 1, 99])),
        "lora": either(st.just([{"id": 0, "scale": 1.0}])),
        "cache_prompt": either(st.booleans()),
        "cache_salt": either(st.text(max_size=20)),
        "priority": either(st.sampled_from([-(2**31), -1, 0, 1, 2**31])),
        "n_keep": either(st.sampled_from([-1, 0, 10**6])),
        "use_beam_search": either(st.booleans()),
        "prompt_logprobs": either(PROBS),
        "kv_transfer_params": junk(),
        "vllm_xargs": junk(),
        "response_fields": junk(),
        "metadata": junk(),
    }


def _request(path: str, body: dict[str, Any], headers: dict[str, Any] | None = None) -> Request:
    stream = body.get("stream") is True
    return Request(path, serialise(body), {"content-type": "application/json", **(headers or {})}, stream)


def models() -> st.SearchStrategy[Any]:
    """The `model` field: the served model mostly, else names no one serves, adapter syntax, or junk."""
    odd = st.sampled_from(["fake:nope", "nope", "FAKE", "fake ", "x" * 300, "fake\u0000", "../../etc/passwd"])
    return weighted((8, st.just("fake")), (1, odd), (1, junk()))


def bodies(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    """A body with a few optional fields (most requests pass the gateway and reach an engine), with any number of
    them (most are refused: many fields at once, each possibly wrong), or with one field poisoned."""
    few = st.lists(st.sampled_from(sorted(optional)), max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({**required, **{n: optional[n] for n in names}})
    )
    # One field of a body holding JSON nested around the limits, or a value no parser accepts.
    poison = weighted((2, deep_values()), (1, st.sampled_from(UNPARSABLE)))
    poisoned = st.tuples(few, st.sampled_from(sorted({*required, *optional})), poison).map(
        lambda t: {**t[0], t[1]: t[2]}
    )
    return weighted((4, few), (1, st.fixed_dictionaries(required, optional=optional)), (1, poisoned))


def chunks() -> st.SearchStrategy[int | None]:
    """How a body is framed: mostly with a Content-Length, else chunked in pieces from 1 byte up."""
    return weighted((4, st.none()), (1, st.integers(min_value=1, max_value=4096)))


def chat_requests() -> st.SearchStrategy[Request]:
    """`POST /v1/chat/completions` with hostile bodies."""
    body = bodies({"model": models(), "messages": messages()}, common_fields())
    return st.tuples(body, chunks()).map(lambda t: _request("/v1/chat/completions", t[0]).chunked(t[1]))


def completion_requests() -> st.SearchStrategy[Request]:
    """`POST /v1/completions` with hostile bodies."""
    optional = {**common_fields(), "suffix": either(texts()), "echo": either(st.booleans())}
    body = bodies({"model": models(), "prompt": prompts()}, optional)
    return st.tuples(body, chunks()).map(lambda t: _request("/v1/completions", t[0]).chunked(t[1]))


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bodies that are not a JSON object: bytes, other JSON values, truncated, BOM-prefixed, oversized, empty."""
    valid = b'{"model":"fake","messages":[{"role":"user","content":"hi"}]}'
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"", b"null", b"[]", b"[{}]", b'"fake"', b"1", b"true", b"{", b"}", b"{}", b"\xef\xbb\xbf{}"]),
        st.integers(min_value=1, max_value=len(valid) - 1).map(lambda n: valid[:n]),
        st.just(b"\xef\xbb\xbf" + valid),
        st.just(valid[:-1] + b',"model":"fake","model":["dup"]}'),
        st.just(b'{"model":"fake","messages":[{"role":"user","content":"' + b"x" * MAX_BODY_BYTES + b'"}]}'),
        st.just(b'{"model":"fake","messages":[{"role":"user","content":"\xff\xfe"}]}'),
        st.just(b'{"model":"fake","max_tokens":' + b"9" * 400 + b',"messages":[{"role":"user","content":"hi"}]}'),
    )


HEADER_JUNK = [b"", b"nan", b"NaN", b"inf", b"-inf", b"-1", b"0", b"1e309", b"1e-300", b" 5 ", b"abc", b"0x10"]
HEADER_JUNK += [b"\xd9\xa1", b"batch", b"interactive", b"BATCH", b"realtime", b"9" * 400, b"\xff" * 20]


def header_values() -> st.SearchStrategy[bytes]:
    """Header values: edge cases, then any bytes a well-framed header line can carry (no CR or LF)."""
    free = st.binary(min_size=1, max_size=64).filter(lambda v: b"\r" not in v and b"\n" not in v)
    return st.one_of(st.sampled_from(HEADER_JUNK), free)


def scheduling_headers() -> st.SearchStrategy[dict[str, Any]]:
    """The headers the hot path reads, with junk values; and odd content types."""
    return st.fixed_dictionaries(
        {},
        optional={
            "x-fleetgate-priority": header_values(),
            "x-session-id": header_values(),
            "x-fleetgate-queue-timeout": header_values(),
            "x-request-id": header_values(),
            "content-type": st.sampled_from([b"text/plain", b"application/x-www-form-urlencoded", b"", b"\xff"]),
            "expect": st.sampled_from([b"100-continue", b"junk"]),
            "content-encoding": st.sampled_from([b"gzip", b"br", b"identity", b"x"]),
        },
    )


def authorizations() -> st.SearchStrategy[bytes | None]:
    """Authorization headers that carry no valid key (None: no header at all)."""
    return st.one_of(
        st.none(),
        st.sampled_from([b"", b"Bearer", b"Bearer ", b"bearer x", b"Basic Zm9vOmJhcg==", b"Bearer fg-demo-x"]),
        st.sampled_from([b"Bearer " + b"k" * 8000, b"Bearer \xff\xfe", b"Bearer a b c", b"Token fg-test-fuzz"]),
        header_values().map(lambda v: b"Bearer " + v),
        header_values(),
    )
