"""A recorded trace's `reply` is what the simulated engine says, so a follow-up that quotes it finds it cached."""

from __future__ import annotations

import json
from pathlib import Path

from fleetgate.sim.text import split_pieces
from fleetgate.sim.workload import TraceWorkload


def test_recorded_reply_is_replayed_and_capped_by_max_tokens(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    rows = [
        {"arrival": 1.0, "tenant": "a", "messages": [{"role": "user", "content": "hi"}], "reply": "Yes, we can go."},
        {"arrival": 2.0, "tenant": "a", "prompt": "x", "max_tokens": 2, "reply": "One two three"},
        {"arrival": 3.0, "tenant": "a", "prompt": "y", "completion_tokens": 3},
    ]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, capped, invented = list(TraceWorkload(trace))
    assert first.reply == split_pieces("Yes, we can go.") and "".join(first.reply) == "Yes, we can go."
    assert len(first.reply_ids) == len(first.reply)
    assert capped.reply == ["One", " two"]  # an engine stops at max_tokens
    assert len(invented.reply) == 3  # no recorded text: as many made-up pieces as recorded tokens
