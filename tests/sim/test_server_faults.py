"""Injected faults, from the admin endpoint and from CLI flags: 500s, hangs, crashes, latency, slow streams."""

from __future__ import annotations

import json
import time

import openai
import pytest

from fleetgate.sim.faults import CRASH_EXIT_CODE, FaultInjector, Faults, Verdict
from tests.sim.conftest import FAST, StartSim
from tests.sim.test_server_api import client, messages


async def test_error_rate_one_answers_500_in_vllms_shape_and_zero_recovers(start_sim: StartSim) -> None:
    sim = start_sim(*FAST)
    c = client(sim)
    status, body = sim.post("/sim/faults", {"error_rate": 1.0})
    assert status == 200 and json.loads(body)["error_rate"] == 1.0
    with pytest.raises(openai.InternalServerError) as err:
        await c.chat.completions.create(model="smollm2", messages=messages("x"), max_tokens=2)
    assert err.value.status_code == 500 and err.value.body["type"] == "InternalServerError"  # type: ignore[index]
    sim.post("/sim/faults", {"error_rate": 0.0})
    ok = await c.chat.completions.create(model="smollm2", messages=messages("x"), max_tokens=2)
    assert ok.usage is not None and ok.usage.completion_tokens == 2
    assert sim.post("/sim/faults", {"error_rate": 2})[0] == 400


async def test_hang_accepts_and_never_answers_so_the_client_times_out(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--fault-hang-rate", "1")
    c = client(sim, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await c.chat.completions.create(model="smollm2", messages=messages("x"), max_tokens=2)
    assert time.monotonic() - t0 >= 0.5
    assert sim.get("/health")[0] == 200  # the process is alive, it just never answers


async def test_crash_exits_the_process_mid_request(start_sim: StartSim) -> None:
    sim = start_sim(*FAST)
    assert sim.post("/sim/faults", {"crash": True})[0] == 200
    with pytest.raises(openai.APIConnectionError):
        await client(sim).chat.completions.create(model="smollm2", messages=messages("x"), max_tokens=2)
    assert sim.proc.wait(5) == CRASH_EXIT_CODE


async def test_added_latency_and_slow_stream_scale_with_the_time_scale(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--fault-latency", "8", "--time-scale", "4")
    c = client(sim)
    t0 = time.monotonic()
    await c.chat.completions.create(model="smollm2", messages=messages("x"), max_tokens=2)
    # 8 model seconds at x4 are 2 s: unscaled would be 8 s. A loaded machine only adds time, so the floor is exact
    # and the ceiling leaves 4 s of slack while still telling scaled from unscaled.
    assert 2 <= time.monotonic() - t0 < 6
    sim.post("/sim/faults", {"latency_s": 0})

    async def decode_time() -> float:
        t = time.monotonic()
        extra = {"ignore_eos": True}
        await c.chat.completions.create(model="smollm2", messages=messages("y"), max_tokens=60, extra_body=extra)
        return time.monotonic() - t

    fast = await decode_time()
    sim.post("/sim/faults", {"slow_stream": 20})
    slow = await decode_time()
    assert slow > 3 * fast  # 20x slower decode; 3x leaves room for request overhead inflated by a loaded machine


def test_injector_dice_are_seeded_and_crash_after_counts_requests() -> None:
    def rolls(seed: int) -> list[Verdict]:
        inj = FaultInjector(Faults(error_rate=0.3, hang_rate=0.2), seed)
        return [inj.judge() for _ in range(50)]

    assert rolls(1) == rolls(1) and rolls(1) != rolls(2)
    assert {Verdict.ERROR, Verdict.HANG, Verdict.SERVE} == set(rolls(1))
    inj = FaultInjector(Faults(crash_after=3), 0)
    assert [inj.judge() for _ in range(3)] == [Verdict.SERVE, Verdict.SERVE, Verdict.CRASH]
