"""Real-time driver: model time is wall time times the scale; each step sleeps its modelled duration."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from fleetgate.sim.engine import Engine

log = logging.getLogger("fleetgate.sim")
ENGINE_DEAD_EXIT_CODE = 3


class ScaledClock:
    """Model seconds since start: wall seconds times `scale` (scale 10 runs the model ten times faster)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        """The current model time."""
        return (time.monotonic() - self._t0) * self.scale

    def wall(self, model_seconds: float) -> float:
        """Wall seconds a model duration takes."""
        return model_seconds / self.scale


class EngineRunner:
    """The engine core's busy loop: schedule, sleep the step's cost, apply it; idle until kicked."""

    def __init__(self, engine: Engine, clock: ScaledClock) -> None:
        self.engine = engine
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """New work or freed capacity: make the loop look again."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine-core")
        self._task.add_done_callback(self._died)

    @staticmethod
    def _died(task: asyncio.Task[None]) -> None:
        # like vLLM's EngineDeadError: a dead engine core takes the server down instead of hanging every request
        if not task.cancelled() and task.exception() is not None:
            log.critical("engine core died", exc_info=task.exception())
            os._exit(ENGINE_DEAD_EXIT_CODE)

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            step = self.engine.schedule()
            if step is None:
                await self._wake.wait()
                continue
            await asyncio.sleep(self.clock.wall(step.duration))
            self.engine.complete(step)
