"""The registry's records and the dispatch policy: a container, a reservation
of one, and `choose_container`, the pure function that picks which container
a request gets. No locking and no I/O (the scheduler holds the lock)."""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Deque, Iterable, Optional, Sequence

FREE, BUSY, DOWN, DRAINING = "free", "busy", "down", "draining"
LATENCY_WINDOW = 50  # recent latencies kept per container for `status`


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
    version: str = ""  # what it serves, as its registration labelled it (a canary routes by it)
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
            "version": self.version, "status": self.status, "in_flight": self.in_flight,
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
        avoided = {id(a) for a in avoid}  # a canary's side can be most containers: one look each
        others = [c for c in candidates if id(c) not in avoided]
        if any(c.healthy and not c.draining for c in others):
            candidates = others
    best, best_key = None, None
    for c in candidates:  # min() over the free ones, unrolled: this runs for every request
        if c.healthy and not c.draining and c.in_flight < c.capacity:
            key = (busy_by_host.get(c.host, 0), c.last_released, c.id)
            if best is None or key < best_key:
                best, best_key = c, key
    return best


@dataclass(frozen=True)
class Canary:
    """`percent` % of requests go to the containers labelled `version`, the rest to the others."""
    version: str
    percent: float

    def takes(self, serial: int) -> bool:
        """Whether request number `serial` (0, 1, 2, ...) goes to the canary: a
        deterministic spread, so any n consecutive requests send within one of
        n * percent / 100 to it, whatever the load. Pure."""
        return int((serial + 1) * self.percent / 100) > int(serial * self.percent / 100)
