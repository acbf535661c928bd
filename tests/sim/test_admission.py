"""The simulator's admission: the gateway's queue, capacity and reserve run synchronously on simulated time."""

from __future__ import annotations

from fleetgate.config import AdmissionConfig
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.scheduling.fair_queue import Ticket
from fleetgate.sim.admission import SimAdmission

INTERACTIVE, STANDARD, BATCH = 0, 1, 2


class Recorder:
    """The simulator's side: what was routed, shed and scheduled."""

    def __init__(self) -> None:
        self.routed: list[str] = []
        self.shed: list[tuple[str, str]] = []
        self.deadlines: list[tuple[float, Ticket[str]]] = []


def _admission(now: list[float], per_replica: int = 1, **cfg: object) -> tuple[SimAdmission[str], Recorder]:
    replica = Replica(id="r0", url="sim://r0", models={"m"}, healthy=True)
    config = AdmissionConfig.model_validate({"max_in_flight_per_replica": per_replica, **cfg})
    controller = AdmissionController(config, ReplicaRegistry([replica]), lambda: now[0])
    seen = Recorder()
    admission = SimAdmission(
        controller,
        "m",
        seen.routed.append,
        lambda item, why: seen.shed.append((item, why)),
        lambda when, ticket: seen.deadlines.append((when, ticket)),
    )
    admission.refresh(now[0])
    return admission, seen


def test_admits_while_there_is_room_then_queues_and_hands_over_on_end() -> None:
    now = [0.0]
    admission, seen = _admission(now, per_replica=1, queue_timeout={"interactive": 5, "standard": 7, "batch": 9})
    admission.arrive("a", "t", STANDARD, 10, now[0])
    admission.arrive("b", "t", STANDARD, 10, now[0])
    assert seen.routed == ["a"] and admission.waiting() == 1
    assert [when for when, _ in seen.deadlines] == [7.0]  # the standard class's queue timeout
    admission.ended("t", STANDARD, 1.0)
    assert seen.routed == ["a", "b"] and admission.waiting() == 0 and admission.admitted == 1


def test_a_deadline_sheds_only_what_still_waits() -> None:
    now = [0.0]
    admission, seen = _admission(now)
    admission.arrive("a", "t", STANDARD, 10, 0.0)
    admission.arrive("b", "t", STANDARD, 10, 0.0)
    (_, ticket) = seen.deadlines[0]
    admission.deadline(ticket)
    admission.deadline(ticket)  # a second ring finds nothing
    assert seen.shed == [("b", "deadline")] and admission.waiting() == 0


def test_a_full_queue_evicts_the_flooding_tenant_for_a_quiet_one() -> None:
    now = [0.0]
    admission, seen = _admission(now, max_queue=2, reserve_slots=0, reserve_fraction=0)
    admission.arrive("n0", "noisy", STANDARD, 10, 0.0)  # takes the one slot
    admission.arrive("n1", "noisy", STANDARD, 10, 0.0)
    admission.arrive("n2", "noisy", STANDARD, 10, 0.0)
    admission.arrive("q1", "quiet", STANDARD, 10, 0.0)
    assert seen.shed == [("n2", "evicted")]
    admission.ended("noisy", STANDARD, 1.0)
    admission.ended("noisy", STANDARD, 2.0)
    assert seen.routed == ["n0", "n1", "q1"]  # one turn per tenant: the quiet one kept its place


def test_batch_is_shed_under_kv_pressure_and_a_full_queue_refuses_the_largest_holder() -> None:
    now = [0.0]
    admission, seen = _admission(now, shed_kv_threshold=0.9, max_queue=1)
    replica = admission.controller.registry.get("r0")
    assert replica is not None
    replica.metrics = ReplicaMetrics(scraped_at=0.0, waiting=0, running=1, kv_usage=0.95)
    admission.arrive("b", "t", BATCH, 10, 0.0)
    assert seen.shed == [("b", "kv_pressure")]
    admission.arrive("s1", "t", STANDARD, 10, 0.0)
    admission.arrive("s2", "t", STANDARD, 10, 0.0)
    admission.arrive("s3", "t", STANDARD, 10, 0.0)
    assert seen.routed == ["s1"] and seen.shed[-1] == ("s3", "queue_full")
