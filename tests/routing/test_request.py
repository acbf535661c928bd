"""Building a RouteRequest from a request body: rendering, session key, token estimate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.routing.request import render_messages, render_prompt, route_request_from
from fleetgate.routing.router import RouteRequest


def test_messages_rendered_in_order_with_roles() -> None:
    payload = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi "}, {"type": "image_url"}, {"type": "text", "text": "there"}],
            },
        ],
    }
    assert render_prompt(payload) == "<system>Be terse.\n<user>Hi there\n"


def test_completion_prompts() -> None:
    assert render_prompt({"prompt": "once upon"}) == "once upon"
    assert render_prompt({"prompt": ["a", "b"]}) == "a\nb"
    assert render_prompt({"prompt": [1, 2, 3]}) is None  # token ids: nothing to hash as text


def test_route_request_fields() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], "user": "alice"}
    req = route_request_from(body, "tenant-1")
    assert req == RouteRequest(
        model="m",
        tenant="tenant-1",
        session="alice",
        prompt_text=req.prompt_text,
        est_tokens=len(req.prompt_text or "") // 4,
    )
    assert route_request_from(body, "t", "sess-9").session == "sess-9"  # the header wins over `user`
    assert route_request_from({"model": "m", "prompt": "p"}, "t", adapter="a", est_tokens=7).adapter == "a"
    assert route_request_from({"model": "m", "prompt": "p"}, "t", est_tokens=7).est_tokens == 7
    assert route_request_from({"model": "m", "prompt": "p", "user": ""}, "t").session is None


def test_keyword_and_positional_construction_still_work() -> None:
    assert RouteRequest("m").tenant == "demo"
    assert RouteRequest(model="m", tenant="t").prompt_text is None


_MSG = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()})


@given(st.lists(_MSG, max_size=6), st.lists(_MSG, max_size=4))
def test_rendering_is_prefix_stable(history: list[dict[str, str]], more: list[dict[str, str]]) -> None:
    assert render_messages(history + more).startswith(render_messages(history))
