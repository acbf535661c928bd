"""Fault injection: what the simulator does wrong on purpose, and the seeded dice that decide when."""

from __future__ import annotations

import random
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Faults(BaseModel):
    """Faults applied to inference requests; every delay is divided by the server's time scale."""

    model_config = ConfigDict(extra="forbid")

    latency_s: float = Field(0.0, ge=0, description="added before a request is admitted")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered 500")
    hang_rate: float = Field(0.0, ge=0, le=1, description="share of requests accepted and never answered")
    crash: bool = Field(False, description="the next inference request kills the process (exit code 70)")
    crash_after: int | None = Field(None, ge=1, description="the N-th inference request kills the process")
    slow_stream: float = Field(1.0, ge=1, description="multiplier on the per-token (decode) time")


class Verdict(Enum):
    """What happens to one request."""

    SERVE = "serve"
    ERROR = "error"
    HANG = "hang"
    CRASH = "crash"


CRASH_EXIT_CODE = 70  # EX_SOFTWARE: tests tell an injected crash from any other exit


class FaultInjector:
    """Holds the current faults and rolls seeded dice per request, so a run with a given seed replays."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self._rng = random.Random(seed ^ 0x5EED)
        self.requests = 0

    def update(self, changes: dict[str, object]) -> Faults:
        """Merge a partial update (the admin endpoint's body) and validate it."""
        self.faults = Faults.model_validate({**self.faults.model_dump(), **changes})
        return self.faults

    def judge(self) -> Verdict:
        """Decide the fate of the next inference request."""
        self.requests += 1
        f = self.faults
        if f.crash or (f.crash_after is not None and self.requests >= f.crash_after):
            return Verdict.CRASH
        roll = self._rng.random()
        if roll < f.error_rate:
            return Verdict.ERROR
        if roll < f.error_rate + f.hang_rate:
            return Verdict.HANG
        return Verdict.SERVE
