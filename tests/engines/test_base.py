"""What every dialect shares: the OpenAI model list, read for models, adapters and context windows."""

from __future__ import annotations

from fleetgate.engines.base import adapter_ids, listing_context, model_ids

LISTING = {
    "data": [
        {"id": "base", "parent": None, "max_model_len": 4096},
        {"id": "sql", "parent": "base", "max_model_len": 2048},
        {"id": "self", "parent": "self"},
        {"no": "id"},
        "junk",
    ]
}


def test_models_and_adapters_from_the_list() -> None:
    assert model_ids(LISTING) == {"base", "sql", "self"}
    assert adapter_ids(LISTING) == {"sql"}  # an entry whose parent is another model
    assert model_ids({"data": "x"}) == set() and adapter_ids(None) == set()


def test_the_smallest_reported_context_window() -> None:
    assert listing_context(LISTING, lambda item: item.get("max_model_len")) == 2048
    assert listing_context({"data": [{"n": 0}, {"n": -1}, {"n": "9"}]}, lambda item: item.get("n")) is None
    assert listing_context({"data": None}, lambda item: 1) is None
