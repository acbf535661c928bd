"""Reading the few samples a dialect names from an engine's Prometheus `/metrics` text."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def select_samples(text: str, wanted: frozenset[str]) -> str:
    """Only the sample lines named in `wanted`: vLLM prints hundreds of histogram lines nobody here reads.

    Dropping `# TYPE` lines too keeps the parser from renaming counter samples (it appends `_total` to a
    counter sample that lacks it, as llama.cpp's `n_tokens_max` does), so names stay exactly as printed.
    """
    kept: list[str] = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(" ", 1)[0]
        if name in wanted:
            kept.append(line)
    kept.append("")
    return "\n".join(kept)


def samples(text: str, wanted: frozenset[str]) -> Iterator[Sample]:
    """The wanted samples with their labels; raises ValueError on a wanted line the parser rejects."""
    for family in text_string_to_metric_families(select_samples(text, wanted)):
        yield from family.samples


def sample_values(text: str, wanted: frozenset[str]) -> dict[str, list[float]]:
    """Values of the wanted samples, one per label set (engines in data parallel, ranks)."""
    values: dict[str, list[float]] = {}
    for sample in samples(text, wanted):
        values.setdefault(sample.name, []).append(float(sample.value))
    return values
