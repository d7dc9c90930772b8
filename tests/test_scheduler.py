"""The dispatch policy and the wait queue, without HTTP: in-memory containers,
a fake clock, and real threads where concurrency is the point. Every test
drives the one waiting API production uses, `request(on_grant)` /
`withdraw(place)`, as the dispatcher does."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from mlcluster_orchestrator.containers import BUSY, DOWN, DRAINING, FREE, Container, Reservation, choose_container
from mlcluster_orchestrator.scheduler import NoContainers, QueueFull, QueuePlace, Scheduler
from support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def take(scheduler: Scheduler, **kw) -> Reservation:
    """A request that must be granted at once: its on_grant runs before request() returns."""
    granted: list[Reservation] = []
    place = scheduler.request(granted.append, **kw)
    assert place is None and len(granted) == 1, "expected a container at once"
    return granted[0]


class Requests:
    """Named requests through `request(on_grant)`; `order` is the order their grants ran in."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.order: list[str] = []
        self.granted: dict[str, Reservation] = {}
        self.places: dict[str, QueuePlace] = {}

    def ask(self, name: str, **kw) -> QueuePlace | None:
        def on_grant(reservation: Reservation) -> None:
            self.order.append(name)
            self.granted[name] = reservation
        place = self.scheduler.request(on_grant, **kw)
        if place is not None:
            self.places[name] = place
        return place

    def queue(self, names: list[str], **kw) -> None:
        """Each name joins the queue (none is granted at once), in this order."""
        for name in names:
            depth = self.scheduler.queue_depth
            assert self.ask(name, **kw) is not None, f"{name} was granted at once, expected to wait"
            assert self.scheduler.queue_depth == depth + 1

    def release(self, name: str, ok: bool = True) -> int:
        return self.scheduler.release(self.granted[name], ok=ok)


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


def test_requests_spread_over_hosts_before_doubling_up(clock):
    s = Scheduler(clock=clock)
    for port, (cid, host) in enumerate([("a1", "host-a"), ("a2", "host-a"), ("b1", "host-b")], start=5000):
        s.add(host, port, id=cid)
    first, second, third = take(s), take(s), take(s)
    assert {first.container.host, second.container.host} == {"host-a", "host-b"}
    assert third.container.host == "host-a"
    assert {r.container.id for r in (first, second, third)} == {"a1", "a2", "b1"}


@pytest.mark.parametrize("released_first", ["x", "y"])
def test_among_free_containers_the_one_idle_longest_goes_first(clock, released_first):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="x")
    s.add("h", 2, id="y")
    held = {r.container.id: r for r in (take(s), take(s))}
    released_second = "y" if released_first == "x" else "x"
    s.release(held[released_first], ok=True)
    clock.advance(1)
    s.release(held[released_second], ok=True)
    assert take(s).container.id == released_first


# -- the queue ---------------------------------------------------------------------
def test_waiters_are_served_first_come_first_served(clock):
    s = Scheduler(queue_limit=20, clock=clock)
    s.add("h", 1)
    held = take(s)
    requests = Requests(s)
    names = [f"r{i}" for i in range(10)]
    requests.queue(names)
    s.release(held, ok=True)
    for i, name in enumerate(names):  # each one releases once granted: a chain in queue order
        assert requests.order == names[:i + 1]
        requests.release(name)
    assert requests.order == names and s.queue_depth == 0


def test_fifo_holds_with_several_containers(clock):
    s = Scheduler(queue_limit=20, clock=clock)
    s.add("h1", 1)
    s.add("h2", 1)
    held = [take(s), take(s)]
    requests = Requests(s)
    names = [f"r{i}" for i in range(6)]
    requests.queue(names)
    s.release(held[0], ok=True)
    assert requests.order == ["r0"]
    s.release(held[1], ok=True)
    assert requests.order == ["r0", "r1"]
    assert s.queue_depth == 4
    for name in names:
        requests.release(name)
    assert requests.order == names and s.queue_depth == 0


def test_once_the_queue_is_empty_a_new_arrival_is_served_at_once(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    held = take(s)
    requests = Requests(s)
    requests.queue(["early"])
    s.release(held, ok=True)
    assert requests.order == ["early"]
    requests.release("early")
    # The container is free again and nobody waits: a new arrival gets it at once.
    assert take(s).container.status == BUSY


def test_a_retry_goes_to_the_front_and_keeps_its_arrival_time(clock):
    s = Scheduler(queue_limit=1, clock=clock)
    s.add("h", 1)
    held = take(s)
    requests = Requests(s)
    requests.queue(["waiting"])
    requests.queue(["retry"], front=True, queued_at=42.0)  # past the queue limit too
    assert s.queue_depth == 2
    clock.advance(3)
    s.release(held, ok=True)
    requests.release("retry")
    assert requests.order == ["retry", "waiting"]
    retry = requests.granted["retry"]
    assert retry.queued_at == 42.0
    assert retry.queue_wait_s == pytest.approx(clock.now - 42.0)


def test_release_says_whether_it_handed_the_container_to_a_waiter(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    first = take(s)
    requests = Requests(s)
    requests.queue(["next"])
    assert s.release(first, ok=True) == 1
    assert requests.order == ["next"]
    assert requests.release("next") == 0  # nobody waiting
    assert s.release(take(s), ok=True) == 0


def test_a_request_granted_at_once_runs_its_callback_before_request_returns(clock):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="c1")
    seen = []
    assert s.request(lambda r: seen.append((r.container.id, r.container.in_flight))) is None
    assert seen == [("c1", 1)]


def test_queue_limit_refuses_at_once(clock):
    s = Scheduler(queue_limit=2, clock=clock)
    s.add("h", 1)
    held = take(s)
    requests = Requests(s)
    requests.queue(["w1", "w2"])
    with pytest.raises(QueueFull):
        requests.ask("w3")
    assert s.queue_depth == 2
    s.release(held, ok=True)
    requests.release("w1")
    requests.release("w2")
    assert requests.order == ["w1", "w2"]


def test_queue_limit_zero_means_no_waiting(clock):
    s = Scheduler(queue_limit=0, clock=clock)
    s.add("h", 1)
    take(s)
    with pytest.raises(QueueFull):
        s.request(lambda r: pytest.fail("granted past a full queue"))


def test_a_waiter_that_gives_up_leaves_the_queue(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    held = take(s)
    requests = Requests(s)
    requests.queue(["late"])
    assert s.withdraw(requests.places["late"]) is True  # its deadline passed (the caller keeps time)
    assert s.queue_depth == 0
    s.release(held, ok=True)
    assert requests.order == []  # it is never granted after it left
    # Nobody phantom holds the container: it is free and goes to the next caller.
    assert [c.status for c in s.containers()] == [FREE]
    assert take(s).container.in_flight == 1


def test_withdrawing_a_place_already_granted_says_so(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h", 1)
    held = take(s)
    requests = Requests(s)
    requests.queue(["w"])
    s.release(held, ok=True)
    assert s.withdraw(requests.places["w"]) is False  # it holds the container: the caller must release it
    assert requests.order == ["w"] and s.get(requests.granted["w"].container.id).in_flight == 1


def test_nothing_registered_is_an_error_not_a_wait(clock):
    with pytest.raises(NoContainers):
        Scheduler(clock=clock).request(lambda r: pytest.fail("granted with nothing registered"))


# -- capacity under real concurrency ----------------------------------------------
def wait_for_grant(scheduler: Scheduler, timeout: float) -> Reservation:
    """A request thread: blocks on an event its on_grant sets."""
    granted = threading.Event()
    box: list[Reservation] = []

    def on_grant(reservation: Reservation) -> None:
        box.append(reservation)
        granted.set()
    scheduler.request(on_grant)
    assert granted.wait(timeout), "no container within the time limit"
    return box[0]


def test_capacity_is_never_exceeded_under_many_threads():
    s = Scheduler(queue_limit=100)
    capacities = {"a": 1, "b": 1, "c": 2, "d": 3}
    for i, (cid, cap) in enumerate(capacities.items()):
        s.add(f"host{i % 2}", 6000 + i, capacity=cap, id=cid)
    lock = threading.Lock()
    now, peak, violations, errors = Counter(), Counter(), [], []
    rounds, threads_n = 150, 16

    def request_loop() -> None:
        try:
            for _ in range(rounds):
                r = wait_for_grant(s, timeout=30)
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
        except Exception as exc:  # noted for the test to see
            errors.append(exc)

    threads = [threading.Thread(target=request_loop) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
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
    requests = Requests(s)
    requests.queue(["gave_up"])  # nothing to take: it waits, then gives up
    assert s.withdraw(requests.places["gave_up"]) is True
    requests.queue(["waiting"])
    s.set_health("c1", True)  # coming back hands it to the queue's head
    assert requests.order == ["waiting"]
    requests.release("waiting")
    assert s.get("c1").status == FREE


def test_new_registrations_can_start_out_of_rotation(clock):
    s = Scheduler(clock=clock)
    s.add("h", 1, id="c1", healthy=False)
    requests = Requests(s)
    requests.queue(["early"])
    assert s.withdraw(requests.places["early"]) is True
    s.set_health("c1", True)
    assert take(s).container.id == "c1"


def test_drain_lets_in_flight_finish_and_takes_no_new_requests(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    s.add("h1", 1, id="c1")
    s.add("h2", 1, id="c2")
    in_flight = take(s)
    assert in_flight.container.id == "c1"
    s.drain("c1")
    assert s.get("c1").status == DRAINING
    other = take(s)
    assert other.container.id == "c2"
    s.release(in_flight, ok=True)  # the in-flight request finishes normally...
    assert s.get("c1") is None  # ...and the drained container leaves the registry
    assert in_flight.container.served == 1
    requests = Requests(s)
    requests.queue(["blocked"])  # c1 is gone and c2 is busy
    assert s.withdraw(requests.places["blocked"]) is True
    s.release(other, ok=True)
    assert requests.order == []
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
    held = take(s)
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
    s.release(take(s), ok=True, latency_ms=10.0)
    s.release(take(s), ok=True, latency_ms=20.0)
    s.release(take(s), ok=False)
    snap = s.snapshot()
    assert snap["queue"] == {"depth": 0, "limit": 7}
    assert (snap["served"], snap["failed"], snap["in_flight"]) == (2, 1, 0)
    (c,) = snap["containers"]
    assert c == {"id": "c1", "host": "h", "port": 1, "capacity": 1, "version": "", "status": FREE, "in_flight": 0,
                 "served": 2, "failed": 1, "recent_latency_ms": 15.0}


def test_a_retry_avoids_the_container_that_failed_it_while_another_is_healthy(clock):
    s = Scheduler(queue_limit=5, clock=clock)
    a, b = s.add("h", 1, id="a"), s.add("h", 2, id="b")
    assert choose_container([a, b], {}, avoid=[a]) is b
    held_b = take(s)  # a was released longer ago? both 0: the smallest id first
    if held_b.container is a:
        s.release(held_b, ok=True)
        held_b = take(s)
    assert held_b.container is b
    # Only `a` is free, but the retry must not repeat on it: it waits for b,
    # and a new arrival behind it is not held up by it.
    assert choose_container([a, b], {}, avoid=[a]) is None
    requests = Requests(s)
    requests.queue(["retry"], front=True, avoid=[a])
    requests.ask("newcomer")  # granted within request(), past the waiting retry
    assert requests.order == ["newcomer"] and requests.granted["newcomer"].container is a
    s.release(held_b, ok=True)
    assert requests.order == ["newcomer", "retry"] and requests.granted["retry"].container is b
    # With b out of rotation, a retry may go to a again rather than fail.
    s.set_health("b", False)
    assert choose_container([a, b], {}, avoid=[a]) is a or not a.can_take()
