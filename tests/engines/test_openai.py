"""The generic OpenAI-compatible dialect: OpenAI's fields only, its model list as health, nothing engine-specific."""

from __future__ import annotations

import pytest

from fleetgate.engines.counters import CountersError
from fleetgate.engines.openai import OPENAI


def test_unknown_engines_get_openai_fields_only() -> None:
    body = {"model": "m", "prompt": "hi", "id_slot": 0, "temperature": 0.2, "top_k": 3, "cache_salt": "s"}
    assert OPENAI.prepare(body, "t") == {"model": "m", "prompt": "hi", "temperature": 0.2}


def test_nothing_beyond_the_model_list() -> None:
    assert (OPENAI.health_path, OPENAI.models_path, OPENAI.metrics_path) == ("/v1/models", "/v1/models", None)
    assert OPENAI.owned_by is None and OPENAI.count_prompt is None and OPENAI.lora is None
    with pytest.raises(CountersError, match="cannot reconcile engine kind 'openai'"):
        OPENAI.token_counters("")


def test_context_is_read_in_either_shape() -> None:
    assert OPENAI.context_len({"data": [{"id": "m", "max_model_len": 2048}]}) == 2048
    assert OPENAI.context_len({"data": [{"id": "m", "meta": {"n_ctx": 4096}}]}) == 4096
    assert OPENAI.context_len(["not", "a", "listing"]) is None
