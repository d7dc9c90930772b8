"""The orchestrator's Prometheus series, fed by the dispatcher's events."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .scheduler import Scheduler

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """queue depth and in-flight (read at scrape time), request latency and
    queue-wait histograms, answers by status and errors by kind."""

    def __init__(self, scheduler: Scheduler):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("orchestrator_requests_total", "new_request answers by HTTP status", ["status"], registry=r)
        self.errors = Counter("orchestrator_errors_total", "errors by kind", ["kind"], registry=r)
        self.latency = Histogram("orchestrator_request_seconds", "time from arrival to answer",
                                 registry=r, buckets=LATENCY_BUCKETS)
        self.queue_wait = Histogram("orchestrator_queue_wait_seconds", "time spent waiting for a container",
                                    registry=r, buckets=LATENCY_BUCKETS)
        self._by_status: dict[int, object] = {}  # status -> its counter child (labels() costs a lock and a lookup)
        Gauge("orchestrator_queue_depth", "requests waiting for a container", registry=r).set_function(
            lambda: scheduler.queue_depth)
        Gauge("orchestrator_in_flight", "requests being served by a container", registry=r).set_function(
            lambda: sum(c.in_flight for c in scheduler.containers()))

    def on_event(self, kind: str, data: dict) -> None:
        """The dispatcher's hook: ("served"|"failed"|"rejected", data)."""
        if kind == "served":
            self.latency.observe(data["total_s"])
            self.queue_wait.observe(data["queue_s"])
        elif kind == "failed":
            self.errors.labels(kind=f"container_{data['kind']}").inc()
        elif kind == "rejected":
            self.errors.labels(kind=data["reason"]).inc()

    def answered(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.requests.labels(status=str(status))
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
