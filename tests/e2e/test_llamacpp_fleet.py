"""Real llama-server replicas behind the real gateway, driven with the official `openai` SDK."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import DEMO_KEY, Stack, start_stack, stop_stack
from tests.fakes import free_port

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hi."}]


def _client(stack: Stack, key: str = DEMO_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_models_list(llama_stack: Stack) -> None:
    assert [m.id for m in _client(llama_stack).models.list()] == ["smollm2"]


def test_chat_non_stream(llama_stack: Stack) -> None:
    reply = _client(llama_stack).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=8)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_chat_stream(llama_stack: Stack) -> None:
    stream = _client(llama_stack).chat.completions.create(
        model="smollm2",
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
    assert all(c.usage is None for c in chunks)  # not asked for: the forced usage chunk is hidden


def test_chat_stream_with_usage(llama_stack: Stack) -> None:
    stream = _client(llama_stack).chat.completions.create(
        model="smollm2",
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0


def test_text_completion(llama_stack: Stack) -> None:
    reply = _client(llama_stack).completions.create(model="smollm2", prompt="The sky is", max_tokens=6)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_requests_spread_over_both_replicas(llama_stack: Stack) -> None:
    client = _client(llama_stack)
    seen: Counter[str] = Counter()
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
        seen[raw.headers["x-fleetgate-replica"]] += 1
    assert set(seen) == {"local-0", "local-1"}


def test_wrong_key_is_401(llama_stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        _client(llama_stack, key="sk-wrong").chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert "sk-wrong" not in str(info.value)


def test_unknown_model_is_404(llama_stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _client(llama_stack).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]


def test_malformed_json_is_400(llama_stack: Stack) -> None:
    request = urllib.request.Request(
        f"{llama_stack.url}/v1/chat/completions",
        data=b'{"model": "smollm2", "messages": [',
        headers={"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert "not valid JSON" in json.loads(info.value.read())["error"]["message"]


def test_status_json_shows_replicas(llama_stack: Stack) -> None:
    result = llama_stack.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["running"] and data["gateway_healthy"]
    assert [r["healthy"] for r in data["replicas"]] == [True, True]
    assert data["engine_binary"].endswith("llama-server")
    assert data["model"].endswith(".gguf")


def test_crashed_replica_is_bypassed_then_restarted(llama_stack: Stack) -> None:
    client = _client(llama_stack)
    victim = llama_stack.state()["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    for _ in range(6):  # every request still succeeds: retried on the other replica before any byte was sent
        reply = client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
        assert reply.choices[0].message.content is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        replicas = llama_stack.state()["replicas"]
        status = json.loads(llama_stack.cli("status", "--json").stdout)
        if replicas[0]["pid"] != victim["pid"] and all(r["healthy"] for r in status["replicas"]):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the crashed replica was not restarted within 90 s")
    seen = set()
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model="smollm2", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
        seen.add(raw.headers["x-fleetgate-replica"])
    assert seen == {"local-0", "local-1"}  # re-admitted after it came back


def test_engine_down_is_503_not_a_hang(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    stack = start_stack(tmp_path, "--engine", dead)
    try:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            _client(stack).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
        assert time.monotonic() - started < 10
        assert info.value.status_code == 503
        assert "unreachable" in str(info.value)
    finally:
        stop_stack(stack)


def test_gateway_killed_leaves_no_orphans(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, "--replicas", "1")
    replica_pid = stack.state()["replicas"][0]["pid"]
    os.kill(stack.state()["supervisor"]["pid"], signal.SIGKILL)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _process_state(replica_pid) not in ("gone", "Z"):
        time.sleep(0.2)
    # The kernel's parent-death signal stops it; once stopped it is gone, or a zombie until PID 1 reaps it (this
    # sandbox's PID 1 is not ours, and under load it has been seen reaping late).
    state = _process_state(replica_pid)
    stop_stack(stack)  # `down` still cleans up whatever is left, and the run dir
    assert state in ("gone", "Z"), f"replica {replica_pid} still running 15 s after its supervisor was killed: {state}"
    assert not (stack.run_dir / "state.json").exists()


def _process_state(pid: int) -> str:
    """`gone`, or the state letter and parent of a process, from /proc (Z: exited, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "gone"
    return fields[0] if fields[0] == "Z" else f"state {fields[0]}, parent {fields[1]}"


def test_engine_native_lengths_cannot_pass_a_tenants_cap(llama_stack: Stack) -> None:
    """Issue 17.5 on the real engine: llama-server prefers `n_predict` to `max_tokens`, and `n_predict: -1` streamed
    without end; a tenant capped at 3 output tokens gets at most 3, however it asks."""
    assert llama_stack.cli("tenants", "create", "capped3", "--max-output-tokens", "3", "--json").returncode == 0
    created = llama_stack.cli("keys", "create", "capped3", "--json")
    sdk = _client(llama_stack, json.loads(created.stdout)["key"])
    prompt = "Count from one to one hundred in words:"
    for extra in ({"n_predict": 10}, {"n_predict": -1, "ignore_eos": True}, {"max_completion_tokens": 50}):
        done = sdk.completions.create(model="smollm2", prompt=prompt, extra_body=extra)
        assert done.usage is not None and done.usage.completion_tokens <= 3, (extra, done.usage)
    chunks = sdk.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"n_predict": -1, "ignore_eos": True},
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens <= 3
