"""The roll's pure decisions: waves, version labels, the canary's size; the
orchestrator's canary split (Canary.takes, and the scheduler's queue per
version) with in-memory containers and a fake clock."""
from __future__ import annotations

import pytest

from mlcluster.rollout.local import refusal
from mlcluster.rollout.policy import Slot, canary_size, version_label, waves
from mlcluster.state import ClusterState
from mlcluster_orchestrator.containers import Canary, Reservation
from mlcluster_orchestrator.health import load_registry, save_registry
from mlcluster_orchestrator.scheduler import Scheduler
from support.clock import FakeClock

SLOTS = [Slot(f"worker{w}-{c}", f"worker{w}") for w in (1, 2, 3) for c in (1, 2)]


def ids(plan: list[list[Slot]]) -> list[list[str]]:
    return [[s.id for s in wave] for wave in plan]


@pytest.mark.parametrize("max_unavailable, expected", [
    (None, [["worker1-1", "worker1-2"], ["worker2-1", "worker2-2"], ["worker3-1", "worker3-2"]]),
    (1, [[s.id] for s in SLOTS]),
    (4, [["worker1-1", "worker1-2", "worker2-1", "worker2-2"], ["worker3-1", "worker3-2"]]),
    (99, [[s.id for s in SLOTS]]),
])
def test_waves_are_one_host_by_default_or_k_containers(max_unavailable, expected):
    assert ids(waves(SLOTS, max_unavailable, per_host=2)) == expected


def test_waves_keep_a_hosts_containers_together_whatever_the_order_given():
    mixed = [SLOTS[0], SLOTS[2], SLOTS[1], SLOTS[3]]
    assert ids(waves(mixed, None, per_host=2)) == [["worker1-1", "worker1-2"], ["worker2-1", "worker2-2"]]


def test_a_wave_below_one_container_is_refused_and_nothing_left_is_no_wave():
    with pytest.raises(ValueError):
        waves(SLOTS, 0, per_host=2)
    assert waves([], None, per_host=2) == []


def test_a_version_label_depends_on_every_serving_setting():
    base = version_label("/m/a", "torch", 0, -1.0)
    assert base == version_label("/m/a", "torch", 0, -1.0) and base.startswith("v") and len(base) == 9
    others = {version_label("/m/b", "torch", 0, -1.0), version_label("/m/a", "onnx", 0, -1.0),
              version_label("/m/a", "torch", 8, -1.0), version_label("/m/a", "torch", 0, 5.0)}
    assert base not in others and len(others) == 4


@pytest.mark.parametrize("total, percent, per_wave, expected", [
    (4, 25, 2, 1), (4, 50, 2, 2), (4, 50, 1, 1), (8, 10, 2, 1), (2, 99, 2, 2), (1, 1, 1, 1)])
def test_a_canary_is_its_share_of_the_containers_at_least_one_at_most_a_wave(total, percent, per_wave, expected):
    assert canary_size(total, percent, per_wave) == expected


def test_a_canary_outside_zero_to_a_hundred_is_refused():
    for percent in (0, 100, -5):
        with pytest.raises(ValueError):
            canary_size(4, percent, 2)


def test_only_a_local_process_cluster_is_rolled():
    assert refusal(ClusterState(name="a", provider="local", token="t", runtime="process")) is None
    for provider, runtime in (("local", "docker"), ("ssh", "process"), ("aws", "docker")):
        why = refusal(ClusterState(name="a", provider=provider, token="t", runtime=runtime))
        assert why is not None and "local-process only" in why


@pytest.mark.parametrize("percent", [25, 10, 50, 33.3, 1])
def test_the_split_is_exact_over_any_window(percent):
    canary = Canary("v2", percent)
    taken = [canary.takes(n) for n in range(2000)]
    assert sum(taken) == int(2000 * percent / 100)
    for start in range(0, 1900, 97):  # any window of 100 is within one of its share
        assert abs(sum(taken[start:start + 100]) - percent) <= 1


def test_the_scheduler_sends_the_canary_its_share_under_load_each_side_in_its_own_order():
    scheduler = Scheduler(queue_limit=5000, clock=FakeClock())
    old = [scheduler.add("10.0.0.1", 8000 + i, capacity=1, id=f"old{i}", version="v1") for i in range(3)]
    new = scheduler.add("10.0.0.2", 9000, capacity=1, id="new", version="v2")
    scheduler.set_canary(Canary("v2", 25))
    granted: list[tuple[int, Reservation]] = []
    for n in range(2000):  # far more requests than containers: most wait in the queue
        scheduler.request(lambda r, n=n: granted.append((n, r)))
    while len(granted) < 2000:
        before = len(granted)
        for _, reservation in list(granted):
            if reservation.container.in_flight:
                scheduler.release(reservation, ok=True)
        assert len(granted) > before, "the queue stopped moving"
    to_new = [n for n, r in granted if r.container is new]
    assert len(to_new) == 500 and sum(1 for _, r in granted if r.container in old) == 1500
    assert to_new == sorted(to_new)  # the canary's side is served first come, first served
    assert scheduler.snapshot()["canary"] == {"version": "v2", "percent": 25.0}


def test_a_side_with_no_healthy_container_falls_back_to_the_other_and_no_canary_splits_nothing():
    scheduler = Scheduler(queue_limit=10, clock=FakeClock())
    old = scheduler.add("10.0.0.1", 8000, capacity=100, id="old", version="v1")
    scheduler.add("10.0.0.2", 9000, capacity=100, id="new", version="v2", healthy=False)
    scheduler.set_canary(Canary("v2", 50))
    got = []
    for _ in range(10):
        scheduler.request(got.append)
    assert len(got) == 10 and all(r.container is old for r in got)
    scheduler.set_canary(None)
    assert scheduler.snapshot()["canary"] is None


def test_a_restarted_orchestrator_restores_each_containers_version(tmp_path):
    saved = Scheduler(clock=FakeClock())
    saved.add("10.0.0.1", 8000, id="old", version="v1")
    saved.add("10.0.0.2", 9000, id="new", version="v2")
    save_registry(tmp_path / "registry.json", saved)
    restored = Scheduler(clock=FakeClock())
    assert load_registry(tmp_path / "registry.json", restored) == 2
    assert {c.id: c.version for c in restored.containers()} == {"old": "v1", "new": "v2"}
