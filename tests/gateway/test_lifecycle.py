"""The lifecycle mechanism: components start in order and stop in reverse; a failed start stops what had started."""

from __future__ import annotations

import logging

import pytest

from fleetgate.gateway.lifecycle import Component, running


class Recorder:
    """Components that write what happened to them into one list."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def component(self, name: str, *, fail: bool = False, stop_fails: bool = False, sync: bool = False) -> Component:
        """A component; `fail` raises from its start, `stop_fails` from its stop; `sync`: plain calls, no coroutines."""

        def start_sync() -> None:
            self.events.append(f"start {name}")
            if fail:
                raise RuntimeError(f"{name} cannot start")

        async def start() -> None:
            start_sync()

        def stop_sync() -> None:
            self.events.append(f"stop {name}")
            if stop_fails:
                raise RuntimeError(f"{name} cannot stop")

        async def stop() -> None:
            stop_sync()

        return Component(name, start_sync if sync else start, stop_sync if sync else stop)


async def test_components_stop_in_reverse_of_their_start() -> None:
    rec = Recorder()
    parts = [
        rec.component("a"),
        rec.component("b", sync=True),
        Component("c", stop=lambda: rec.events.append("stop c")),
    ]
    async with running(parts):
        assert rec.events == ["start a", "start b"]
        rec.events.append("serving")
    assert rec.events == ["start a", "start b", "serving", "stop c", "stop b", "stop a"]


async def test_a_failed_start_stops_what_had_started_in_reverse() -> None:
    rec = Recorder()
    parts = [rec.component("a"), rec.component("b", sync=True), rec.component("c", fail=True), rec.component("d")]
    with pytest.raises(RuntimeError, match="c cannot start"):
        async with running(parts):
            pytest.fail("the body must not run when a start failed")
    # c failed to start, so it is not stopped; d never started.
    assert rec.events == ["start a", "start b", "start c", "stop b", "stop a"]


async def test_a_failing_stop_does_not_keep_the_others_from_stopping(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    parts = [rec.component("a"), rec.component("b", stop_fails=True), rec.component("c")]
    with caplog.at_level(logging.ERROR, logger="fleetgate.gateway.lifecycle"):
        async with running(parts):
            pass
    assert rec.events == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert "stopping b failed" in caplog.text


async def test_an_error_while_serving_still_stops_everything() -> None:
    rec = Recorder()
    with pytest.raises(KeyError):
        async with running([rec.component("a"), rec.component("b")]):
            raise KeyError("boom")
    assert rec.events == ["start a", "start b", "stop b", "stop a"]
