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
from typing import Callable, Optional

import urllib3

from .scheduler import NoContainers, QueueFull, QueueTimeout, Reservation, Scheduler

log = logging.getLogger("mlcluster.orchestrator")


@dataclass
class Outcome:
    """What the caller gets: an HTTP status, a JSON body and extra headers."""
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class ContainerFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # refused | timeout | http_5xx | bad_answer


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
        # One pool per container address, reused across threads (urllib3's pools are thread-safe).
        self.http = urllib3.PoolManager(num_pools=256, maxsize=8, retries=False)

    def handle(self, body: bytes) -> Outcome:
        arrived = self.clock()
        deadline = arrived + self.queue_timeout_s
        attempts = 0
        last_failure: Optional[ContainerFailed] = None
        while attempts < self.max_attempts:
            try:
                reservation = self.scheduler.acquire(
                    timeout=max(0.0, deadline - self.clock()), front=attempts > 0, queued_at=arrived)
            except QueueFull:
                self.on_event("rejected", {"reason": "queue_full"})
                return Outcome(503, {"error": "all containers are busy and the queue is full; retry later", "status": 503},
                               {"Retry-After": "1"})
            except QueueTimeout:
                self.on_event("rejected", {"reason": "queue_timeout"})
                if last_failure is not None:
                    return self._gave_up(attempts, last_failure)
                return Outcome(504, {"error": f"no container became free within {self.queue_timeout_s:g} s", "status": 504})
            except NoContainers:
                self.on_event("rejected", {"reason": "no_containers"})
                return Outcome(503, {"error": "no worker containers are registered", "status": 503}, {"Retry-After": "5"})
            attempts += 1
            try:
                status, answer, elapsed_ms = self._forward(reservation, body)
            except ContainerFailed as failure:
                last_failure = failure
                self._container_failed(reservation, failure)
                continue
            self.scheduler.release(reservation, ok=True, latency_ms=elapsed_ms if status < 400 else None)
            total_ms = (self.clock() - arrived) * 1000
            container = reservation.container
            if status >= 400:  # the worker judged the request itself bad: pass its answer on
                return Outcome(status, answer)
            queue_ms = reservation.queue_wait_s * 1000
            self.on_event("served", {"container": container.id, "queue_s": queue_ms / 1000, "total_s": total_ms / 1000})
            return Outcome(200, {
                "result": answer,
                "container": {"id": container.id, "host": container.host, "port": container.port},
                "queue_ms": round(queue_ms, 3),
                "total_ms": round(total_ms, 3),
                "attempts": attempts,
            })
        return self._gave_up(attempts, last_failure)

    def _gave_up(self, attempts: int, failure: ContainerFailed) -> Outcome:
        return Outcome(502, {"error": f"{attempts} container(s) failed this request; last: {failure}", "status": 502})

    def _forward(self, reservation: Reservation, body: bytes) -> tuple[int, dict, float]:
        container = reservation.container
        start = self.clock()
        try:
            response = self.http.request(
                "POST", f"{container.url}/run_model", body=body or b"{}",
                headers={"Content-Type": "application/json"},
                timeout=urllib3.Timeout(connect=2.0, read=self.forward_timeout_s))
        except urllib3.exceptions.TimeoutError as exc:
            raise ContainerFailed("timeout", f"{container.id} timed out: {exc}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise ContainerFailed("refused", f"{container.id} unreachable: {exc}") from None
        elapsed_ms = (self.clock() - start) * 1000
        if response.status >= 500:
            raise ContainerFailed("http_5xx", f"{container.id} answered {response.status}")
        try:
            answer = json.loads(response.data)
        except ValueError:
            raise ContainerFailed("bad_answer", f"{container.id} answered something that is not JSON") from None
        return response.status, answer, elapsed_ms

    def _container_failed(self, reservation: Reservation, failure: ContainerFailed) -> None:
        container = reservation.container
        log.warning("container %s (%s) failed: %s; marking it down and retrying elsewhere",
                    container.id, container.url, failure)
        self.scheduler.set_health(container.id, False)
        self.scheduler.release(reservation, ok=False)
        self.on_event("failed", {"container": container.id, "kind": failure.kind})
