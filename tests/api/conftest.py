"""Fixtures of the API tests: one real gateway in front of the suite's fake engine (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway


@pytest.fixture
async def gw(engine: FakeEngine) -> AsyncIterator[RunningGateway]:
    """A gateway in front of `engine` (a module with its own `gw` overrides this one)."""
    async with running_gateway([engine.url]) as running:
        yield running
