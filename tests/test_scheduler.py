"""The dispatch policy and the wait queue, without HTTP: in-memory containers,
a fake clock, and real threads where waiting is the point."""
from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter

import pytest

from mlcluster_orchestrator.scheduler import (
    BUSY, DOWN, DRAINING, FREE, Container, NoContainers, QueueFull, QueueTimeout, Scheduler, choose_container,
)
from support.waiting import wait_for as _wait_for

# threads need a moment to reach the queue; poll often so the tests stay fast
wait_for = functools.partial(_wait_for, timeout=10.0, interval=0.001)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Waiter(threading.Thread):
    """A request thread: acquires (blocking), notes the grant, holds it until told."""

    def __init__(self, scheduler: Scheduler, name: str, log: list, front: bool = False,
                 queued_at: float | None = None, hold: threading.Event | None = None):
        super().__init__(name=name, daemon=True)
        self.scheduler, self.log, self.front, self.queued_at = scheduler, log, front, queued_at
        self.hold = hold
        self.reservation = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.reservation = self.scheduler.acquire(timeout=10, front=self.front, queued_at=self.queued_at)
        except Exception as exc:  # noted for the test to see
            self.error = exc
            return
        self.log.append(self.name)
        if self.hold is not None:
            self.hold.wait(10)
        self.scheduler.release(self.reservation, ok=True)


def queue_up(scheduler: Scheduler, names: list[str], log: list, **kw) -> list[Waiter]:
    """Start one waiter per name, each only after the previous one is queued,
    so the arrival order is exactly `names`."""
    waiters = []
    for name in names:
        depth = scheduler.queue_depth
        waiter = Waiter(scheduler, name, log, **kw)
        waiter.start()
        wait_for(lambda: scheduler.queue_depth == depth + 1, f"{name} to join the queue")
        waiters.append(waiter)
    return waiters


def join_all(waiters: list[Waiter]) -> None:
    for w in waiters:
        w.join(10)
        assert not w.is_alive(), f"{w.name} never finished"
        assert w.error is None, f"{w.name} failed: {w.error!r}"


# -- the policy, as a pure function ------------------------------------------------
def test_choose_prefers_the_host_with_fewest_busy_containers_then_the_longest_idle():
    a1 = Container("a1", "host-a", 1, last_released=1.0)
    b1 = Container("b1", "host-b", 1, last_released=5.0)
    b2 = Container("b2", "host-b", 2, last_released=3.0)
    assert choose_container([a1, b1, b2], {"host-a": 1}) is b2  # host-b is less busy; b2 idle longer
    assert choose_container([a1, b1, b2], {"host-b": 1}) is a1
    assert choose_container([a1, b1, b2], {}) is a1  # hosts tie: the one idle longest
    a1.healthy, b2.draining, b1.in_flight = False, True, 1
    assert choose_container([a1, b1, b2], {}) is None  # down, draining and full ones are never chosen


def test_acquire_spreads_over_hosts_before_doubling_up(clock):
    s = Scheduler(clock=clock)
    for port, (cid, host) in enumerate([("a1", "host-a"), ("a2", "host-a"), ("b1", "host-b")], start=5000):
        s.add(host, port, id=cid)
    first = s.acquire(timeout=0)
    second = s.acquire(timeout=0)
    third = s.acquire(timeout=0)
    assert {first.container.host, second.container.host} == {"host-a", "host-b"}
    assert third.container.host == "host-a"
    assert {r.container.id for r in (first, second, third)} == {"a1", "a2", "b1"}


@pytest.mark.parametrize("released_first", ["x", "y"])
def test_among_free_containers_the_one_idle_longest_goes_first(clock, released_first):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="x")
    s.add("h", 2, id="y")
    held = {r.container.id: r for r in (s.acquire(timeout=0), s.acquire(timeout=0))}
    released_second = "y" if released_first == "x" else "x"
    s.release(held[released_first], ok=True)
    clock.advance(1)
    s.release(held[released_second], ok=True)
    assert s.acquire(timeout=0).container.id == released_first


# -- the queue ---------------------------------------------------------------------
def test_waiters_are_served_first_come_first_served(clock):
    s = Scheduler(queue_limit=20, clock=clock)
    s.add("h", 1)
    held = s.acquire(timeout=0)
    log: list[str] = []
    names = [f"r{i}" for i in range(10)]
    waiters = queue_up(s, names, log)
    s.release(held, ok=True)  # each waiter releases after noting its grant: a chain in queue order
    join_all(waiters)
    assert log == names


def test_fifo_holds_with_several_containers(clock):
    s = Scheduler(queue_limit=20, clock=clock)
    s.add("h1", 1)
    s.add("h2", 1)
    held = [s.acquire(timeout=0), s.acquire(timeout=0)]
    log: list[str] = []
    gate = threading.Event()
    names = [f"r{i}" for i in range(6)]
    waiters = queue_up(s, names, log, hold=gate)
    s.release(held[0], ok=True)
    wait_for(lambda: log == ["r0"], "the first waiter to be served")
    s.release(held[1], ok=True)
    wait_for(lambda: log == ["r0", "r1"], "the second waiter to be served")
    assert s.queue_depth == 4
    gate.set()
    join_all(waiters)
    assert log[:2] == ["r0", "r1"] and sorted(log) == sorted(names)


def test_once_the_queue_is_empty_a_new_arrival_is_served_at_once(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    held = s.acquire(timeout=0)
    log: list[str] = []
    waiters = queue_up(s, ["early"], log)
    s.release(held, ok=True)
    join_all(waiters)
    assert log == ["early"]
    # The container is free again and nobody waits: a new arrival gets it at once.
    assert s.acquire(timeout=0).container.status == BUSY


def test_a_retry_goes_to_the_front_and_keeps_its_arrival_time(clock):
    s = Scheduler(queue_limit=1, clock=clock)
    s.add("h", 1)
    held = s.acquire(timeout=0)
    log: list[str] = []
    waiters = queue_up(s, ["waiting"], log)
    retry = Waiter(s, "retry", log, front=True, queued_at=42.0)  # past the queue limit too
    retry.start()
    wait_for(lambda: s.queue_depth == 2, "the retry to join the queue")
    clock.advance(3)
    s.release(held, ok=True)
    join_all(waiters + [retry])
    assert log == ["retry", "waiting"]
    assert retry.reservation.queued_at == 42.0
    assert retry.reservation.queue_wait_s == pytest.approx(clock.now - 42.0)


def test_release_says_whether_it_handed_the_container_to_a_waiter(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    first = s.acquire(timeout=0)
    log: list[str] = []
    gate = threading.Event()
    waiters = queue_up(s, ["next"], log, hold=gate)
    assert s.release(first, ok=True) == 1
    wait_for(lambda: log == ["next"], "the waiter to be served")
    gate.set()
    join_all(waiters)  # the waiter's own release found nobody waiting
    assert s.release(s.acquire(timeout=0), ok=True) == 0


def test_queue_limit_refuses_at_once(clock):
    s = Scheduler(queue_limit=2, clock=clock)
    s.add("h", 1)
    held = s.acquire(timeout=0)
    log: list[str] = []
    waiters = queue_up(s, ["w1", "w2"], log)
    with pytest.raises(QueueFull):
        s.acquire(timeout=5)  # would block, then time out, if the limit were not enforced
    assert s.queue_depth == 2
    s.release(held, ok=True)
    join_all(waiters)
    assert log == ["w1", "w2"]


def test_queue_limit_zero_means_no_waiting(clock):
    s = Scheduler(queue_limit=0, clock=clock)
    s.add("h", 1)
    s.acquire(timeout=0)
    with pytest.raises(QueueFull):
        s.acquire(timeout=5)


def test_a_waiter_times_out_and_leaves_the_queue(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    held = s.acquire(timeout=0)
    with pytest.raises(QueueTimeout):
        s.acquire(timeout=0.05)
    assert s.queue_depth == 0
    s.release(held, ok=True)
    # Nobody phantom holds the container: it is free and goes to the next caller.
    assert [c.status for c in s.containers()] == [FREE]
    assert s.acquire(timeout=0).container.in_flight == 1


def test_nothing_registered_is_an_error_not_a_wait(clock):
    with pytest.raises(NoContainers):
        Scheduler(clock=clock).acquire(timeout=5)


# -- capacity under real concurrency ----------------------------------------------
def test_capacity_is_never_exceeded_under_many_threads():
    s = Scheduler(queue_limit=100)
    capacities = {"a": 1, "b": 1, "c": 2, "d": 3}
    for i, (cid, cap) in enumerate(capacities.items()):
        s.add(f"host{i % 2}", 6000 + i, capacity=cap, id=cid)
    lock = threading.Lock()
    now, peak, violations = Counter(), Counter(), []
    rounds, threads_n = 150, 16

    def request_loop() -> None:
        for _ in range(rounds):
            r = s.acquire(timeout=30)
            cid = r.container.id
            with lock:
                now[cid] += 1
                peak[cid] = max(peak[cid], now[cid])
                if now[cid] > capacities[cid]:
                    violations.append((cid, now[cid]))
            time.sleep(0.0002)  # hold it a moment so requests really overlap
            with lock:
                now[cid] -= 1
            s.release(r, ok=True, latency_ms=0.2)

    threads = [threading.Thread(target=request_loop) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not violations
    assert dict(peak) == capacities  # every container was used, each up to its capacity
    snapshot = s.snapshot()
    assert snapshot["served"] == rounds * threads_n
    assert snapshot["in_flight"] == 0 and snapshot["queue"]["depth"] == 0


# -- health and draining ------------------------------------------------------------
def test_a_down_container_gets_nothing_until_it_is_back(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1, id="c1")
    s.set_health("c1", False)
    assert s.get("c1").status == DOWN
    with pytest.raises(QueueTimeout):
        s.acquire(timeout=0.05)
    log: list[str] = []
    waiters = queue_up(s, ["waiting"], log)
    s.set_health("c1", True)  # coming back hands it to the queue's head
    join_all(waiters)
    assert log == ["waiting"] and s.get("c1").status == FREE


def test_new_registrations_can_start_out_of_rotation(clock):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="c1", healthy=False)
    with pytest.raises(QueueTimeout):
        s.acquire(timeout=0.02)
    s.set_health("c1", True)
    assert s.acquire(timeout=0).container.id == "c1"


def test_drain_lets_in_flight_finish_and_takes_no_new_requests(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h1", 1, id="c1")
    s.add("h2", 1, id="c2")
    in_flight = s.acquire(timeout=0)
    assert in_flight.container.id == "c1"
    s.drain("c1")
    assert s.get("c1").status == DRAINING
    other = s.acquire(timeout=0)
    assert other.container.id == "c2"
    s.release(in_flight, ok=True)  # the in-flight request finishes normally...
    assert s.get("c1") is None  # ...and the drained container leaves the registry
    assert in_flight.container.served == 1
    with pytest.raises(QueueTimeout):
        s.acquire(timeout=0.02)  # c1 is gone and c2 is busy
    s.release(other, ok=True)
    assert [c.id for c in s.containers()] == ["c2"]


def test_draining_an_idle_container_removes_it_and_unknown_ids_are_refused(clock):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="c1")
    s.drain("c1")
    assert s.containers() == []
    with pytest.raises(KeyError):
        s.drain("nope")


def test_registering_again_updates_and_undrains(clock):
    s = Scheduler(clock=clock)
    c = s.add("h", 1, id="c1")
    held = s.acquire(timeout=0)
    s.drain("c1")
    again = s.add("h", 1, capacity=3)
    assert again is c and not c.draining and c.capacity == 3
    s.release(held, ok=True)
    assert s.get("c1") is c
    with pytest.raises(ValueError):
        s.add("other", 2, id="c1")  # an id belongs to one address
    with pytest.raises(ValueError):
        s.add("h", 9, capacity=0)
    with pytest.raises(ValueError):
        Scheduler(queue_limit=-1)


def test_generated_ids_skip_taken_ones(clock):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="container1")
    assert s.add("h", 2).id == "container2"


def test_snapshot_counts_served_failed_and_recent_latency(clock):
    s = Scheduler(queue_limit=7, clock=clock)
    s.add("h", 1, id="c1")
    s.release(s.acquire(timeout=0), ok=True, latency_ms=10.0)
    s.release(s.acquire(timeout=0), ok=True, latency_ms=20.0)
    s.release(s.acquire(timeout=0), ok=False)
    snap = s.snapshot()
    assert snap["queue"] == {"depth": 0, "limit": 7}
    assert (snap["served"], snap["failed"], snap["in_flight"]) == (2, 1, 0)
    (c,) = snap["containers"]
    assert c == {"id": "c1", "host": "h", "port": 1, "capacity": 1, "status": FREE, "in_flight": 0,
                 "served": 2, "failed": 1, "recent_latency_ms": 15.0}


def test_a_retry_avoids_the_container_that_failed_it_while_another_is_healthy(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    a, b = s.add("h", 1, id="a"), s.add("h", 2, id="b")
    assert choose_container([a, b], {}, avoid=[a]) is b
    held_b = s.acquire(timeout=0)  # a was released longer ago? both 0: the smallest id first
    if held_b.container is a:
        s.release(held_b, ok=True)
        held_b = s.acquire(timeout=0)
    assert held_b.container is b
    # Only `a` is free, but the retry must not repeat on it: it waits for b,
    # and a new arrival behind it is not held up by it.
    assert choose_container([a, b], {}, avoid=[a]) is None

    async def run():
        retry = asyncio.ensure_future(s.acquire_async(timeout=5, front=True, avoid=[a]))
        await asyncio.sleep(0)
        newcomer = await s.acquire_async(timeout=5)
        assert newcomer.container is a and not retry.done()
        s.release(held_b, ok=True)
        granted = await retry
        assert granted.container is b
    asyncio.run(run())
    # With b out of rotation, a retry may go to a again rather than fail.
    s.set_health("b", False)
    assert choose_container([a, b], {}, avoid=[a]) is a or not a.can_take()
