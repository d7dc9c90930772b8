"""The orchestrator's Prometheus series, fed by the dispatcher's events.

The per-request series (answers by status, latency and queue-wait
histograms) are plain counts in lists, turned into Prometheus families only
when /metrics is scraped: prometheus_client's own Histogram takes two locks
and walks its buckets in Python on every observation, which cost this
single-threaded event loop more than parsing the request did. The rare
series (errors by kind, the gauges) stay prometheus_client's own.
"""
from __future__ import annotations

import bisect

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .scheduler import Scheduler

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Histogram:
    """Observations counted per bucket (the last one is +Inf), and their sum.
    Only the event loop's thread observes; a scrape reads a consistent-enough copy."""
    __slots__ = ("name", "doc", "counts", "sum")

    def __init__(self, name: str, doc: str):
        self.name, self.doc = name, doc
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: a value on a bound counts there
        self.sum += seconds

    def family(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), list(self.counts)):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)


class _Collector:
    """Hands the plain counts to prometheus_client at scrape time."""

    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        by_status = CounterMetricFamily("orchestrator_requests", "new_request answers by HTTP status",
                                        labels=["status"])
        for status, count in sorted(m.by_status.items()):
            by_status.add_metric([str(status)], count)
        yield by_status
        by_key = CounterMetricFamily("orchestrator_api_key_requests", "requests accepted with each API key, by key id",
                                     labels=["key_id"])
        for key_id, count in sorted(m.by_key.items()):
            by_key.add_metric([key_id], count)
        yield by_key
        yield m.latency.family()
        yield m.queue_wait.family()


class Metrics:
    """queue depth and in-flight (read at scrape time), request latency and
    queue-wait histograms, answers by status and errors by kind."""

    def __init__(self, scheduler: Scheduler):
        self.registry = r = CollectorRegistry()
        self.by_status: dict[int, int] = {}
        self.by_key: dict[str, int] = {}  # API key id -> requests (the id only: never the key)
        self.latency = _Histogram("orchestrator_request_seconds", "time from arrival to answer")
        self.queue_wait = _Histogram("orchestrator_queue_wait_seconds", "time spent waiting for a container")
        r.register(_Collector(self))
        self.errors = Counter("orchestrator_errors_total", "errors by kind", ["kind"], registry=r)
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
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1

    def keyed(self, key_id: str) -> None:
        self.by_key[key_id] = self.by_key.get(key_id, 0) + 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
