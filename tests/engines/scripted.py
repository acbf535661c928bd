"""A scripted engine for the dialects' pure logic: `post(path, body)` answers from a table and keeps the calls."""

from __future__ import annotations

from typing import Any


class ScriptedEngine:
    """Answers each path with its scripted JSON (None: the engine did not answer 200)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """What the fleet's `json_post` hands a dialect, without the network."""
        self.calls.append((path, body))
        return self.answers.get(path)
