"""Forwarding a request to a worker container, with retries elsewhere.

The scheduler decides who gets the request; this module does the HTTP, and
turns a container's failure (refused, timed out, 5xx) into "mark it down and
try another one", so the caller still gets an answer.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from .connections import ConnectionPool, ForwardError
from .scheduler import Container, NoContainers, QueueFull, QueueTimeout, Reservation, Scheduler

log = logging.getLogger("mlcluster.orchestrator")
HANDOFF_PAUSE_S = 0.0002  # see _attempt


@dataclass
class Outcome:
    """What the caller gets: an HTTP status, a JSON body and extra headers."""
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class ContainerFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # refused | timeout | disconnected | http_5xx | bad_answer


class Dispatcher:
    def __init__(self, scheduler: Scheduler, *, queue_timeout_s: float, forward_timeout_s: float,
                 max_attempts: int = 3, on_event: Callable[[str, dict], None] = lambda kind, data: None,
                 clock: Callable[[], float] = time.monotonic):
        self.scheduler = scheduler
        self.queue_timeout_s = queue_timeout_s
        self.forward_timeout_s = forward_timeout_s
        self.max_attempts = max_attempts
        self.on_event = on_event  # metrics hook: ("served"|"failed"|"rejected", data)
        self.clock = clock
        self.pool = ConnectionPool(connect_timeout_s=2.0, read_timeout_s=forward_timeout_s)

    def handle(self, body: bytes) -> Outcome:
        """Serve one request: wait for a container (first come, first served),
        forward the body, and on a container's failure try another one, ahead
        of the queue. Every outcome is an HTTP answer, never an exception."""
        arrived = self.clock()
        deadline = arrived + self.queue_timeout_s
        failures: list[ContainerFailed] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                reservation = self.scheduler.acquire(
                    timeout=max(0.0, deadline - self.clock()), front=attempt > 1, queued_at=arrived)
            except (QueueFull, QueueTimeout, NoContainers) as refusal:
                return self._refused(refusal, failures)
            try:
                status, answer = self._attempt(reservation, body)
            except ContainerFailed as failure:
                failures.append(failure)
                continue
            if status >= 400:  # the worker judged the request itself bad: pass its answer on
                return Outcome(status, answer)
            return self._served(reservation, answer, arrived, attempt)
        return self._gave_up(failures)

    def _attempt(self, reservation: Reservation, body: bytes) -> tuple[int, dict]:
        """Forward once. The reservation is released whatever happens; a failed
        container is marked down first, so it is not handed out again."""
        container = reservation.container
        start = self.clock()
        ok, latency_ms = False, None
        try:
            status, answer = self._forward(container, body)
            ok = True
            if status < 400:
                latency_ms = (self.clock() - start) * 1000
            return status, answer
        except ContainerFailed as failure:
            log.warning("container %s (%s) failed: %s; marking it down and retrying elsewhere",
                        container.id, container.url, failure)
            self.scheduler.set_health(container.id, False)
            self.pool.forget((container.host, container.port))
            self.on_event("failed", {"container": container.id, "kind": failure.kind})
            raise
        finally:
            if self.scheduler.release(reservation, ok=ok, latency_ms=latency_ms):
                # A waiting request got this container. Pause so its thread takes
                # the GIL now and forwards at once, instead of after this thread
                # has built its own answer (~0.3 ms): measured +1.5% throughput
                # at 8 containers x 50 ms, on 2 CPUs. Only when the queue is not
                # empty, where callers wait far longer than this anyway.
                time.sleep(HANDOFF_PAUSE_S)

    def _forward(self, container: Container, body: bytes) -> tuple[int, dict]:
        try:
            status, data = self.pool.post(container.host, container.port, "/run_model", body or b"{}")
        except ForwardError as exc:
            raise ContainerFailed(exc.kind, f"{container.id} ({container.url}): {exc}") from None
        if status >= 500:
            raise ContainerFailed("http_5xx", f"{container.id} answered {status}")
        try:
            return status, json.loads(data)
        except (ValueError, RecursionError):
            raise ContainerFailed("bad_answer", f"{container.id} answered something that is not JSON") from None

    def _served(self, reservation: Reservation, answer: dict, arrived: float, attempts: int) -> Outcome:
        container = reservation.container
        queue_s, total_s = reservation.queue_wait_s, self.clock() - arrived
        self.on_event("served", {"container": container.id, "queue_s": queue_s, "total_s": total_s})
        return Outcome(200, {
            "result": answer,
            "container": {"id": container.id, "host": container.host, "port": container.port},
            "queue_ms": round(queue_s * 1000, 3),
            "total_ms": round(total_s * 1000, 3),
            "attempts": attempts,
        })

    def _refused(self, refusal: Exception, failures: list[ContainerFailed]) -> Outcome:
        if isinstance(refusal, QueueFull):
            self.on_event("rejected", {"reason": "queue_full"})
            return Outcome(503, {"error": "all containers are busy and the queue is full; retry later",
                                 "status": 503}, {"Retry-After": "1"})
        if isinstance(refusal, NoContainers):
            self.on_event("rejected", {"reason": "no_containers"})
            return Outcome(503, {"error": "no worker containers are registered", "status": 503}, {"Retry-After": "5"})
        self.on_event("rejected", {"reason": "queue_timeout"})
        if failures:
            return self._gave_up(failures)
        return Outcome(504, {"error": f"no container became free within {self.queue_timeout_s:g} s", "status": 504})

    def _gave_up(self, failures: list[ContainerFailed]) -> Outcome:
        return Outcome(502, {"error": f"{len(failures)} container(s) failed this request; last: {failures[-1]}",
                             "status": 502})
