"""Reading named samples from Prometheus text: only the wanted lines, names as printed, labels kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.engines.prometheus import sample_values, samples, select_samples
from fleetgate.engines.vllm import METRICS as VLLM_METRICS

RECORDED = Path(__file__).parent.parent / "fleet" / "recorded"


def test_selection_drops_histograms_and_comments() -> None:
    kept = select_samples((RECORDED / "vllm.metrics").read_text(), VLLM_METRICS.sample_names())
    assert "bucket" not in kept and "#" not in kept
    assert kept.count("\n") == len(VLLM_METRICS.sample_names())


def test_counter_names_stay_as_printed_and_labels_are_kept() -> None:
    text = '# TYPE llamacpp:n_tokens_max counter\nllamacpp:n_tokens_max 52\nx{a="1"} 2\nx{a="2"} 3\ny 1\n'
    assert sample_values(text, frozenset({"llamacpp:n_tokens_max", "x"})) == {
        "llamacpp:n_tokens_max": [52.0],
        "x": [2.0, 3.0],
    }
    assert [s.labels for s in samples(text, frozenset({"x"}))] == [{"a": "1"}, {"a": "2"}]


def test_a_garbled_wanted_line_raises_value_error() -> None:
    with pytest.raises(ValueError):
        sample_values("x one two\n", frozenset({"x"}))
    assert sample_values("x one two\n", frozenset({"y"})) == {}  # lines nobody reads are not parsed
