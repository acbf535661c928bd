"""What ends a request from outside its own code: the client leaving, or the request's deadline passing.

Both cancel the request's task (which stops the engine: cancelling closes its upstream connection), and both are
ignored once the finish record is written, after which a hang-up is the normal end of a response. One object per
request with one timer, instead of `asyncio.timeout` plus a context manager: the hot path pays for neither.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fleetgate.http.asgi import ASGIReceive
from fleetgate.http.server import ON_DISCONNECT
from fleetgate.serving.outcome import RequestOutcome

Reason = Literal["client_left", "deadline"]


class Ending:
    """Cancels the request's task when its client leaves or its deadline passes; `reason` says which did."""

    __slots__ = ("_listen", "_outcome", "_task", "_timer", "_watcher", "reason")

    def __init__(self, outcome: RequestOutcome) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._outcome = outcome
        self.reason: Reason | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._listen: Any = None

    def start(self, scope: dict[str, Any], receive: ASGIReceive, seconds: float) -> None:
        """Hear the client leave (our server calls back; any other ASGI server gets a watcher task) and arm the
        deadline."""
        self._timer = asyncio.get_running_loop().call_later(seconds, self._end, "deadline")
        self._listen = scope.get("extensions", {}).get(ON_DISCONNECT)
        if self._listen is not None:
            self._listen(self._client_left)
        else:
            self._watcher = asyncio.create_task(self._watch(receive))

    def stop(self) -> None:
        """Stop listening and disarm the deadline."""
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        elif self._listen is not None:
            self._listen(None)

    def _client_left(self) -> None:
        self._end("client_left")

    def _end(self, reason: Reason) -> None:
        if self.reason is None and not self._outcome.recorded:  # after the finish record: the normal end
            self.reason = reason
            self._task.cancel()

    async def _watch(self, receive: ASGIReceive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._end("client_left")
