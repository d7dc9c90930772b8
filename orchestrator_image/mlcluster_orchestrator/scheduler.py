"""Who gets which container: the registry, reservations and the wait queue.

Plain Python, no HTTP, so the policy can be read and tested on its own (with
a fake clock). The dispatcher calls `request(on_grant)` (a waiting request is
a place in the queue and a callback, no future, no thread) before it forwards a
request and always `release()`s the reservation afterwards; `acquire_async()`
is the same queue as a coroutine, `acquire()` for threads.

Invariants, all kept under one lock:
- a container never holds more reservations than its capacity;
- waiting requests are served first-come, first-served (a retry of a request
  that already waited goes to the front);
- the queue never holds more than `queue_limit` waiters.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterable, Optional, Sequence

FREE, BUSY, DOWN, DRAINING = "free", "busy", "down", "draining"
LATENCY_WINDOW = 50  # recent latencies kept per container for `status`


class QueueFull(Exception):
    """The wait queue is at its limit; the caller should retry later."""


class QueueTimeout(Exception):
    """No container became free within the request's wait limit."""


class NoContainers(Exception):
    """Nothing is registered, so waiting would be pointless."""


@dataclass
class Container:
    id: str
    host: str
    port: int
    capacity: int = 1
    healthy: bool = True
    draining: bool = False
    in_flight: int = 0
    served: int = 0
    failed: int = 0
    last_released: float = 0.0  # clock time; smaller means idle longer
    latencies_ms: Deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    # {"id", "host", "port"} as JSON, for every answer it serves (id and address never change)
    reference_json: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        self.reference_json = json.dumps({"id": self.id, "host": self.host, "port": self.port}).encode()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def status(self) -> str:
        if self.draining:
            return DRAINING
        if not self.healthy:
            return DOWN
        return BUSY if self.in_flight >= self.capacity else FREE

    def can_take(self) -> bool:
        return self.healthy and not self.draining and self.in_flight < self.capacity

    def describe(self) -> dict:
        recent = list(self.latencies_ms)
        return {
            "id": self.id, "host": self.host, "port": self.port, "capacity": self.capacity,
            "status": self.status, "in_flight": self.in_flight,
            "served": self.served, "failed": self.failed,
            "recent_latency_ms": round(sum(recent) / len(recent), 2) if recent else None,
        }


@dataclass
class Reservation:
    container: Container
    queued_at: float
    granted_at: float

    @property
    def queue_wait_s(self) -> float:
        return self.granted_at - self.queued_at


def choose_container(candidates: Iterable[Container], busy_by_host: dict[str, int],
                     avoid: Sequence[Container] = ()) -> Optional[Container]:
    """The dispatch policy: among containers that can take a request, prefer the
    host with the fewest busy containers (containers on one host share its CPUs),
    then the container idle longest. Containers in `avoid` (those that already
    failed this request) are left out while any other is healthy, even a busy one:
    a retry then waits for another container rather than repeat on the same.
    Pure: no locking, no I/O."""
    if avoid:  # by identity: Container's generated == compares every field
        candidates = list(candidates)
        others = [c for c in candidates if all(c is not a for a in avoid)]
        if any(c.healthy and not c.draining for c in others):
            candidates = others
    best, best_key = None, None
    for c in candidates:  # min() over the free ones, unrolled: this runs for every request
        if c.healthy and not c.draining and c.in_flight < c.capacity:
            key = (busy_by_host.get(c.host, 0), c.last_released, c.id)
            if best is None or key < best_key:
                best, best_key = c, key
    return best


def _no_wake() -> None:
    pass


class _Waiter:
    """A place in the queue; `wake()` is called (under the lock) once it holds a reservation."""
    __slots__ = ("wake", "reservation", "queued_at", "avoid", "on_grant")

    def __init__(self, queued_at: float, wake: Callable[[], None] = _no_wake, avoid: Sequence[Container] = (),
                 on_grant: Optional[Callable[[Reservation], None]] = None):
        self.wake = wake
        self.on_grant = on_grant
        self.reservation: Optional[Reservation] = None
        self.queued_at = queued_at
        self.avoid = avoid


class Scheduler:
    def __init__(self, queue_limit: int = 100, clock: Callable[[], float] = time.monotonic):
        if queue_limit < 0:
            raise ValueError("queue_limit must be >= 0")
        self.queue_limit = queue_limit
        self.clock = clock
        self._lock = threading.Lock()
        self._containers: dict[str, Container] = {}
        self._waiters: Deque[_Waiter] = collections.deque()
        self._busy_by_host: dict[str, int] = {}  # host -> its containers with a request in flight
        self._ids = itertools.count(1)
        self.on_change: Callable[[], None] = lambda: None  # called after registry edits
        # called (under the lock) when a drained container leaves the registry
        self.on_forget: Callable[[Container], None] = lambda container: None

    # -- registry ---------------------------------------------------------
    def add(self, host: str, port: int, capacity: int = 1, id: Optional[str] = None,
            healthy: bool = True) -> Container:
        """Register a container; re-registering the same host:port updates it.
        `healthy=False` keeps a new container out of rotation until a health
        check has seen it ready."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            for c in self._containers.values():
                if c.host == host and c.port == port:
                    c.capacity, c.draining = capacity, False
                    container = c
                    break
            else:
                if id is None:
                    id = self._next_id()
                elif id in self._containers:
                    raise ValueError(f"container id {id!r} is already registered")
                container = Container(id=id, host=host, port=port, capacity=capacity, healthy=healthy)
                self._containers[id] = container
            self._dispatch_locked()
        self.on_change()
        return container

    def _next_id(self) -> str:
        while True:
            candidate = f"container{next(self._ids)}"
            if candidate not in self._containers:
                return candidate

    def drain(self, container_id: str) -> Container:
        """Stop giving the container new requests; it leaves the registry once
        its in-flight requests have finished."""
        with self._lock:
            container = self._containers.get(container_id)
            if container is None:
                raise KeyError(container_id)
            container.draining = True
            self._forget_if_drained_locked(container)
        self.on_change()
        return container

    def _forget_if_drained_locked(self, container: Container) -> None:
        if container.draining and container.in_flight == 0:
            if self._containers.pop(container.id, None) is not None:
                self.on_forget(container)

    def containers(self) -> list[Container]:
        with self._lock:
            return list(self._containers.values())

    def get(self, container_id: str) -> Optional[Container]:
        with self._lock:
            return self._containers.get(container_id)

    def set_health(self, container_id: str, healthy: bool) -> None:
        with self._lock:
            container = self._containers.get(container_id)
            if container is None or container.healthy == healthy:
                return
            container.healthy = healthy
            if healthy:
                self._dispatch_locked()

    # -- reservations -----------------------------------------------------
    def request(self, on_grant: Callable[[Reservation], None], front: bool = False,
                queued_at: Optional[float] = None, avoid: Sequence[Container] = ()) -> Optional[_Waiter]:
        """Reserve a container for `on_grant(reservation)`, in FIFO order, with
        no future and no thread: it runs before this returns (which returns None)
        when nobody waits and a container is free; otherwise this returns the
        request's place in the queue, and it runs later, inside whatever
        release(), set_health() or add() frees a container, under the lock (so
        it must not call the scheduler, and must not raise). `withdraw` the
        place to give up waiting. QueueFull / NoContainers as `acquire`;
        `front`, `queued_at`, `avoid` as there."""
        granted = self._reserve_or_enqueue(front, queued_at, _no_wake, avoid, on_grant)
        if isinstance(granted, Reservation):
            on_grant(granted)
            return None
        return granted

    def withdraw(self, waiter: _Waiter) -> bool:
        """Take a waiting request out of the queue: True if it was still
        waiting, False if it was granted a container already (its on_grant ran)."""
        with self._lock:
            if waiter.reservation is not None:
                return False
            self._waiters.remove(waiter)
            return True

    def acquire(self, timeout: float, front: bool = False, queued_at: Optional[float] = None) -> Reservation:
        """Reserve a container, waiting up to `timeout` seconds in FIFO order
        (blocking this thread).

        `front` puts the request at the head of the queue (a retry of a request
        that already waited its turn); `queued_at` keeps its original arrival time.
        """
        event = threading.Event()
        granted = self._reserve_or_enqueue(front, queued_at, event.set)
        if isinstance(granted, Reservation):
            return granted
        event.wait(timeout)
        return self._leave_queue(granted)

    async def acquire_async(self, timeout: float, front: bool = False,
                            queued_at: Optional[float] = None, avoid: Sequence[Container] = ()) -> Reservation:
        """`acquire()` for the event loop: a waiting request costs one future and
        one timer. Must run on the loop that calls `release()`/`set_health()`.
        A request cancelled while it waits leaves the queue (or gives back what
        it was just granted). `avoid`: see `choose_container`."""
        future = None

        def wake() -> None:
            if future is not None and not future.done():
                future.set_result(None)
        granted = self._reserve_or_enqueue(front, queued_at, wake, avoid)
        if isinstance(granted, Reservation):  # the common case: no future, no timer
            return granted
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if granted.reservation is not None and not future.done():  # granted before the future existed
            future.set_result(None)
        timer = loop.call_later(timeout, wake)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                if granted.reservation is None:
                    self._waiters.remove(granted)
                    raise
            self.release(granted.reservation, ok=True)
            raise
        finally:
            timer.cancel()
        return self._leave_queue(granted)

    def _reserve_or_enqueue(self, front: bool, queued_at: Optional[float], wake: Callable[[], None],
                            avoid: Sequence[Container] = (),
                            on_grant: Optional[Callable[[Reservation], None]] = None) -> "Reservation | _Waiter":
        """A reservation at once when nobody waits and a container is free;
        otherwise a place in the queue (QueueFull past the limit)."""
        now = self.clock()
        queued_at = now if queued_at is None else queued_at
        with self._lock:
            if not self._containers:
                raise NoContainers()
            if not self._waiters:
                container = choose_container(self._containers.values(), self._busy_by_host, avoid)
                if container is not None:
                    return self._reserve_locked(container, queued_at, now)
            if len(self._waiters) >= self.queue_limit and not front:
                raise QueueFull()
            # Behind a head that could take any container, nothing is free (see _dispatch_locked).
            behind_any = bool(self._waiters) and not front and not self._waiters[0].avoid
            waiter = _Waiter(queued_at, wake, avoid, on_grant)
            if front:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            if not behind_any:
                self._dispatch_locked()
        return waiter

    def _leave_queue(self, waiter: _Waiter) -> Reservation:
        """After the wait: the reservation if one was granted, else QueueTimeout."""
        with self._lock:
            if waiter.reservation is not None:
                return waiter.reservation
            self._waiters.remove(waiter)
        raise QueueTimeout()

    def release(self, reservation: Reservation, ok: bool, latency_ms: Optional[float] = None) -> int:
        """Give the container back; `ok=False` counts a failure (the caller marks
        it unhealthy separately when the failure was the container's fault).
        Returns how many waiting requests were handed a container as a result."""
        container = reservation.container
        with self._lock:
            container.in_flight -= 1
            if container.in_flight == 0:
                self._busy_by_host[container.host] -= 1
            container.last_released = self.clock()
            if ok:
                container.served += 1
                if latency_ms is not None:
                    container.latencies_ms.append(latency_ms)
            else:
                container.failed += 1
            self._forget_if_drained_locked(container)
            return self._dispatch_locked(freed=container)

    def _reserve_locked(self, container: Container, queued_at: float, now: float) -> Reservation:
        if container.in_flight == 0:
            self._busy_by_host[container.host] = self._busy_by_host.get(container.host, 0) + 1
        container.in_flight += 1
        return Reservation(container=container, queued_at=queued_at, granted_at=now)

    def _dispatch_locked(self, freed: Optional[Container] = None) -> int:
        """Hand free containers to the waiters at the head of the queue; returns how many.
        A waiter whose only free choices are containers it must avoid is passed
        over (it keeps its place) so the ones behind it are not held up.

        So a waiter that may take any container (no `avoid`) never waits while
        one is free: every change that frees capacity (release, set_health, add)
        ends here. Hence `freed` (the one container a release just freed): while
        the head may take any container, `freed` is the only free one, and it is
        handed over without looking at the others (the policy could choose nothing else)."""
        handed, i, waiters = 0, 0, self._waiters
        if freed is not None:
            while waiters and not waiters[0].avoid and freed.can_take():
                self._grant_locked(waiters.popleft(), freed)
                handed += 1
            if not waiters or not waiters[0].avoid:
                return handed
        while i < len(waiters):
            waiter = waiters[i]
            container = choose_container(self._containers.values(), self._busy_by_host, waiter.avoid)
            if container is None:
                if waiter.avoid and any(c.can_take() for c in self._containers.values()):
                    i += 1
                    continue
                break
            del waiters[i]
            self._grant_locked(waiter, container)
            handed += 1
        return handed

    def _grant_locked(self, waiter: _Waiter, container: Container) -> None:
        waiter.reservation = self._reserve_locked(container, waiter.queued_at, self.clock())
        if waiter.on_grant is not None:
            waiter.on_grant(waiter.reservation)
        waiter.wake()

    # -- introspection ----------------------------------------------------
    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiters)

    def snapshot(self) -> dict:
        with self._lock:
            containers = [c.describe() for c in self._containers.values()]
            depth = len(self._waiters)
        return {
            "containers": containers,
            "queue": {"depth": depth, "limit": self.queue_limit},
            "in_flight": sum(c["in_flight"] for c in containers),
            "served": sum(c["served"] for c in containers),
            "failed": sum(c["failed"] for c in containers),
        }
