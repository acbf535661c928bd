"""Background tasks an owner starts once and stops by cancelling and awaiting them: one task, or a periodic loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

MIN_PAUSE = 0.05  # seconds between two runs of a periodic loop at the least, however long a run took


class Background:
    """Holds one long-running task (a poll or scrape loop) for its owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    @property
    def running(self) -> bool:
        """True while the task exists and has not finished."""
        return self._task is not None and not self._task.done()

    def start(self, loop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start `loop()` unless it already runs."""
        if self._task is None:
            self._task = asyncio.create_task(loop(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait until it is gone."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class Periodic:
    """Runs `work` every `interval` seconds in a background task: a poll, probe or scrape loop.

    Runs start `interval` apart whatever each took (at least MIN_PAUSE after the previous one ended, so a slow run
    never becomes a busy loop). With `wait_first` the first run comes one interval after `start()`, for an owner
    that ran `work` itself before starting. An owner may subclass it (passing its own method as `work`) or hold one.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        interval: float,
        *,
        wait_first: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        # Name-mangled: a subclass keeps its own `_work`, `_clock`... without clashing with these.
        self.__work = work
        self.__wait_first = wait_first
        self.__clock = clock
        self.__background = Background(name)

    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self.__background.running

    def start(self) -> None:
        """Run the loop in the background (once: a second call does nothing)."""
        self.__background.start(self.__loop)

    async def stop(self) -> None:
        """Stop the loop and wait until it is gone."""
        await self.__background.stop()

    async def __loop(self) -> None:
        if self.__wait_first:
            await asyncio.sleep(self.interval)
        while True:
            started = self.__clock()
            await self.__work()
            await asyncio.sleep(max(MIN_PAUSE, self.interval - (self.__clock() - started)))
