"""The SGLang dialect: its own request fields and metric names; vLLM's tokenizer and LoRA shapes; no counters."""

from __future__ import annotations

import pytest

from fleetgate.engines.counters import CountersError
from fleetgate.engines.sglang import SGLANG
from tests.engines.scripted import ScriptedEngine


def test_sglang_fields_pass_and_its_controls_do_not() -> None:
    body = {"model": "m", "prompt": "hi", "regex": "a+", "lora_path": "/x", "rid": "r1", "cache_salt": "s"}
    assert SGLANG.prepare(body, "t") == {"model": "m", "prompt": "hi", "regex": "a+"}  # and no salt of ours


def test_metrics_tokenizer_and_adapters() -> None:
    assert SGLANG.metric_names is not None and SGLANG.metric_names.running == "sglang:num_running_reqs"
    assert SGLANG.runtime_lora and SGLANG.slots is None
    assert SGLANG.context_len({"data": [{"id": "m", "max_model_len": 32768}]}) == 32768


async def test_prompts_are_counted_by_its_tokenize_endpoint() -> None:
    engine = ScriptedEngine({"/tokenize": {"count": 5}})
    assert SGLANG.count_prompt is not None
    assert await SGLANG.count_prompt({"model": "m", "prompt": "hello"}, engine.post) == 5


def test_its_token_counters_are_not_reconciled() -> None:
    with pytest.raises(CountersError, match="cannot reconcile engine kind 'sglang'"):
        SGLANG.token_counters("sglang:prompt_tokens_total 5\n")
