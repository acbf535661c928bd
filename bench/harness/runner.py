"""Running a benchmark: its console, SIGTERM as Ctrl-C, coroutines on uvloop, and fair orders of targets."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine, Sequence
from types import FrameType
from typing import Any, TypeVar

from rich.console import Console

T = TypeVar("T")


def console(width: int = 160) -> Console:
    """A console without highlighting, `width` columns wide when the output goes to a file or a pipe (where Rich
    would assume 80)."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else width)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_interrupts() -> None:
    """SIGTERM unwinds like Ctrl-C, through the `finally` blocks that stop every child."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    # Inside the loop, SIGTERM cancels the measurement (sessions close in order) instead of raising mid-callback.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupt)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed (the client should cost as little CPU as it can); SIGTERM cancels it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_cancel_on_sigterm(coro))
    return uvloop.run(_cancel_on_sigterm(coro))


def rotated(items: Sequence[T], rnd: int) -> list[T]:
    """`items` rotated by the round number, so no item always runs right after another one's load."""
    if not items:
        return []
    k = rnd % len(items)
    return [*items[k:], *items[:k]]


def alternated(items: Sequence[T], rnd: int) -> list[T]:
    """`items` in order on even rounds and reversed on odd ones (A B, B A, ...), so drift hits them alike."""
    return list(items) if rnd % 2 == 0 else list(reversed(items))
