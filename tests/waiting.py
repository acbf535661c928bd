"""Waiting on events, not on the clock: poll a condition until it holds, within a generous bound.

The bound is a ceiling that says "this is hung", never a measurement: a loaded 2-core machine may take many times
longer than an idle one, and the wait returns as soon as the condition holds.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Condition = Callable[[], bool | Awaitable[bool]]


async def wait_until(condition: Condition, *, timeout: float = 30.0, interval: float = 0.02, what: str = "") -> None:
    """Return once `condition()` (sync or async) is true; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"still waiting after {timeout:g} s for {what or 'the condition'}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], bool], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> None:
    """`wait_until` for code outside an event loop (threads, subprocess checks)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"still waiting after {timeout:g} s for {what or 'the condition'}")
        time.sleep(interval)
