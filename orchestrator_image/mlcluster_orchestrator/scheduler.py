"""Who gets which container: the registry, reservations and the wait queue.

Plain Python, no HTTP, so the policy can be read and tested on its own (with
a fake clock). The dispatcher calls `request(on_grant)` before it forwards a
request (a waiting request is a place in the queue and a callback: no future,
no thread), `withdraw`s the place if it gives up waiting (its own deadline, or
the caller left), and always `release()`s the reservation afterwards. The
records and the choice of container are in `containers`.

Invariants, all kept under one lock:
- a container never holds more reservations than its capacity;
- waiting requests are served first-come, first-served (a retry of a request
  that already waited goes to the front);
- the queue never holds more than `queue_limit` waiters.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Callable, Deque, Optional, Sequence

from .containers import Canary, Container, Reservation, choose_container


class QueueFull(Exception):
    """The wait queue is at its limit; the caller should retry later."""


class QueueTimeout(Exception):
    """No container became free within the request's wait limit."""


class NoContainers(Exception):
    """Nothing is registered, so waiting would be pointless."""


class QueuePlace:
    """A request's place in the queue; `on_grant` runs (under the lock) once it holds a reservation."""
    __slots__ = ("on_grant", "reservation", "queued_at", "avoid")

    def __init__(self, queued_at: float, on_grant: Callable[[Reservation], None], avoid: Sequence[Container] = ()):
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
        self._waiters: Deque[QueuePlace] = collections.deque()
        self._busy_by_host: dict[str, int] = {}  # host -> its containers with a request in flight
        self._ids = itertools.count(1)
        self.canary: Optional[Canary] = None  # set_canary(); None: every container serves every request
        self._serial = 0  # requests split so far under the canary
        self.on_change: Callable[[], None] = lambda: None  # called after registry edits
        # called (under the lock) when a drained container leaves the registry
        self.on_forget: Callable[[Container], None] = lambda container: None

    # -- registry ---------------------------------------------------------
    def add(self, host: str, port: int, capacity: int = 1, id: Optional[str] = None,
            healthy: bool = True, version: str = "") -> Container:
        """Register a container; re-registering the same host:port updates it.
        `healthy=False` keeps a new container out of rotation until a health
        check has seen it ready."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            for c in self._containers.values():
                if c.host == host and c.port == port:
                    c.capacity, c.draining, c.version = capacity, False, version
                    container = c
                    break
            else:
                if id is None:
                    id = self._next_id()
                elif id in self._containers:
                    raise ValueError(f"container id {id!r} is already registered")
                container = Container(id=id, host=host, port=port, capacity=capacity, healthy=healthy,
                                      version=version)
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

    def set_canary(self, canary: Optional[Canary]) -> None:
        """Send `canary.percent` % of new requests to the containers labelled
        `canary.version` and the rest to the others (None: no split). A
        request waits for a container of its side, in its side's FIFO order;
        when its side has no healthy container it takes any (never a failure
        for want of a version). Retries are not split."""
        with self._lock:
            self.canary, self._serial = canary, 0
            self._dispatch_locked()

    def _pinned_locked(self, canary: Canary, avoid: Sequence[Container]) -> tuple[Container, ...]:
        """`avoid` plus the containers of the other side of the split, for the next request."""
        new = canary.takes(self._serial)
        self._serial += 1
        return (*avoid, *(c for c in self._containers.values() if (c.version == canary.version) != new))

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
                queued_at: Optional[float] = None, avoid: Sequence[Container] = ()) -> Optional[QueuePlace]:
        """Reserve a container for `on_grant(reservation)`, in FIFO order, with
        no future and no thread: it runs before this returns (which returns None)
        when nobody waits and a container is free; otherwise this returns the
        request's place in the queue, and it runs later, inside whatever
        release(), set_health() or add() frees a container, under the lock (so
        it must not call the scheduler, and must not raise). `withdraw` the
        place to give up waiting (the caller keeps the time: QueueTimeout is
        the caller's to raise).

        QueueFull when the queue is at its limit; NoContainers when nothing is
        registered. `front` puts the request at the head of the queue, past the
        limit (a retry of a request that already waited its turn); `queued_at`
        keeps its original arrival time; `avoid`: see `choose_container`."""
        granted = self._reserve_or_enqueue(on_grant, front, queued_at, avoid)
        if isinstance(granted, Reservation):
            on_grant(granted)
            return None
        return granted

    def withdraw(self, place: QueuePlace) -> bool:
        """Take a waiting request out of the queue: True if it was still
        waiting, False if it was granted a container already (its on_grant ran)."""
        with self._lock:
            if place.reservation is not None:
                return False
            self._waiters.remove(place)
            return True

    def _reserve_or_enqueue(self, on_grant: Callable[[Reservation], None], front: bool,
                            queued_at: Optional[float], avoid: Sequence[Container]) -> "Reservation | QueuePlace":
        """A reservation at once when nobody waits and a container is free;
        otherwise a place in the queue (QueueFull past the limit)."""
        now = self.clock()
        queued_at = now if queued_at is None else queued_at
        with self._lock:
            if not self._containers:
                raise NoContainers()
            if self.canary is not None and not front:  # only with a canary: the hot path is unchanged
                avoid = self._pinned_locked(self.canary, avoid)
            if not self._waiters:
                container = choose_container(self._containers.values(), self._busy_by_host, avoid)
                if container is not None:
                    return self._reserve_locked(container, queued_at, now)
            if len(self._waiters) >= self.queue_limit and not front:
                raise QueueFull()
            # Behind a head that could take any container, nothing is free (see _dispatch_locked).
            behind_any = bool(self._waiters) and not front and not self._waiters[0].avoid
            waiter = QueuePlace(queued_at, on_grant, avoid)
            if front:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            if not behind_any:
                self._dispatch_locked()
        return waiter

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

    def _grant_locked(self, waiter: QueuePlace, container: Container) -> None:
        waiter.reservation = self._reserve_locked(container, waiter.queued_at, self.clock())
        waiter.on_grant(waiter.reservation)

    # -- introspection ----------------------------------------------------
    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiters)

    def snapshot(self) -> dict:
        with self._lock:
            containers = [c.describe() for c in self._containers.values()]
            depth = len(self._waiters)
            canary = self.canary
        return {
            "canary": {"version": canary.version, "percent": canary.percent} if canary else None,
            "containers": containers,
            "queue": {"depth": depth, "limit": self.queue_limit},
            "in_flight": sum(c["in_flight"] for c in containers),
            "draining": sum(1 for c in containers if c["status"] == "draining"),
            "served": sum(c["served"] for c in containers),
            "failed": sum(c["failed"] for c in containers),
        }
