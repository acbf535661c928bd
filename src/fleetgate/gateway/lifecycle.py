"""One mechanism to run a process's components: started in order, stopped in reverse.

Each component is entered on an AsyncExitStack right after it starts, so shutdown is exactly the reverse of
startup, and a start that fails halfway stops what had already started (in reverse) before the error goes on. A
component that failed to start is not stopped: its start cleans up after itself. A stop that fails is logged and
the next one runs, so one broken component never keeps the others (the ledger delivery above all) from stopping.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

Step = Callable[[], object]  # a call, or a coroutine function: awaited when it returns an awaitable


@dataclass(frozen=True)
class Component:
    """Something to start and stop with the process; either step may be absent (a resource only closed, say)."""

    name: str
    start: Step | None = None
    stop: Step | None = None


async def _run(step: Step) -> None:
    result = step()
    if inspect.isawaitable(result):
        await result


async def _stop(component: Component) -> None:
    assert component.stop is not None
    try:
        await _run(component.stop)
    except Exception:
        log.exception("stopping %s failed; stopping the rest", component.name)
    else:
        log.debug("stopped %s", component.name)


@asynccontextmanager
async def running(components: Sequence[Component]) -> AsyncIterator[None]:
    """Start `components` in order; on exit, or when one fails to start, stop those started in reverse order."""
    async with AsyncExitStack() as stack:
        for component in components:
            if component.start is not None:
                await _run(component.start)
            if component.stop is not None:
                stack.push_async_callback(_stop, component)
            log.debug("started %s", component.name)
        yield
